"""Corpus check: how many real-world DICOM files ``cxr predict`` can read.

pydicom's wheel ships real DICOM files of many kinds in ``pydicom/data/test_files`` (CR/DX/CT/MR/secondary
capture; JPEG baseline, extended and lossless, JPEG-LS, JPEG 2000, RLE, deflate, big-endian, palette colour,
truncated and broken ones). Every file there that carries pixel data is put through
:func:`cxr.imaging.decode.decode_grayscale`, the function ``cxr predict``, ``cxr serve`` and ``cxr prepare``
decode with,
and the outcome is printed: ``ok`` (a display-ready grey image, so predict-ready) or ``refused: reason`` (the
one-line message the user would see). Anything else (an exception that is not a ``CxrError``) is a bug and is
printed as ``TRACEBACK``. Only the files already in the installed wheel are read: nothing is downloaded.

``--hide-codecs`` makes the optional codec packages (pylibjpeg and its plugins, python-gdcm, pyjpegls)
unimportable first, which reproduces an install without them: pydicom, Pillow and NumPy only. ``--hide MODULE``
hides one of them (``libjpeg``, ``openjpeg``, ``rle``, ``gdcm``, ``jpeg_ls``), to see what each one brings.
Not a test.

    .venv/bin/python benchmarks/dicom_corpus.py [--hide-codecs | --hide MODULE ...] [--recursive] [--folder DIR]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

OPTIONAL_CODECS = ("pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm", "jpeg_ls", "_CharLS")
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# (7FE0,0010) Pixel Data as it appears in a file, little and big endian (PS3.5 7.1 and 7.3).
PIXEL_TAG_BYTES = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")


def hide_codecs(modules: tuple[str, ...] | list[str] = OPTIONAL_CODECS) -> None:
    """Make codec packages unimportable, as if they were not installed (must run before pydicom).

    pylibjpeg finds its plugins (libjpeg, openjpeg, rle) through entry points and imports them unguarded, so
    those entry points are hidden too, as they would be absent with the plugin uninstalled.
    """
    from importlib import metadata

    for module in modules:
        sys.modules[module] = None  # type: ignore[assignment]  # `import module` now raises ImportError
    entry_points = metadata.entry_points

    def visible_entry_points(**selection):
        found = entry_points(**selection)
        if not selection:
            return found
        return metadata.EntryPoints(ep for ep in found if ep.value.split(":")[0].split(".")[0] not in modules)

    metadata.entry_points = visible_entry_points


def test_files_folder() -> Path:
    """The folder of test files that ships inside pydicom's wheel (the files needing a download are not in it)."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def header(path: Path) -> tuple[bool, str, str]:
    """``(has pixel data, transfer syntax, photometric interpretation)`` read from the header alone.

    A header pydicom cannot parse at all counts as carrying pixel data when the Pixel Data tag's bytes are in it,
    so a broken image is counted (and must be refused cleanly) rather than silently left out.
    """
    import pydicom

    try:
        dataset = pydicom.dcmread(path, force=True, defer_size=1024)
    except Exception:  # noqa: BLE001 - any parse failure: fall back to the raw bytes
        data = path.read_bytes()
        return any(tag in data for tag in PIXEL_TAG_BYTES), "?", "?"
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    syntax_name = syntax.name if syntax is not None else "(none)"
    photometric = str(dataset.get("PhotometricInterpretation", "(none)"))
    return any(tag in dataset for tag in PIXEL_TAGS), syntax_name, photometric


def outcome(path: Path) -> tuple[bool, str]:
    """Decode ``path`` exactly as ``cxr predict`` does; ``(ok, what to print)``."""
    from cxr.errors import CxrError
    from cxr.imaging.decode import decode_grayscale

    try:
        gray = decode_grayscale(path, name=path.name)
    except CxrError as error:
        return False, f"refused: {str(error).removeprefix(f'{path.name}: ')}"
    except Exception as error:  # noqa: BLE001 - this is what the check is looking for
        return False, f"TRACEBACK {type(error).__name__}: {error}"
    return True, f"ok {gray.shape[1]}x{gray.shape[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="folder of DICOM files (default: pydicom's bundled test files)")
    parser.add_argument("--recursive", action="store_true", help="also read sub-folders (pydicom's dicomdirtests)")
    parser.add_argument("--hide-codecs", action="store_true", help="pretend no optional codec package is installed")
    parser.add_argument("--hide", action="append", default=[], metavar="MODULE", help="pretend MODULE is not installed")
    args = parser.parse_args(argv)
    if args.hide_codecs or args.hide:
        hide_codecs(OPTIONAL_CODECS if args.hide_codecs else args.hide)
    warnings.simplefilter("ignore")  # pydicom warns about every oddity of these deliberately odd files
    folder = args.folder or test_files_folder()
    paths = sorted(p for p in (folder.rglob("*") if args.recursive else folder.iterdir()) if p.is_file())
    ready = total = 0
    for path in paths:
        has_pixels, syntax, photometric = header(path)
        if not has_pixels:
            continue
        total += 1
        ok, what = outcome(path)
        ready += ok
        print(f"{str(path.relative_to(folder)):<42} {syntax:<52} {photometric:<14} {what}")
    print(f"{ready} predicted-ready of {total} files with pixel data")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
