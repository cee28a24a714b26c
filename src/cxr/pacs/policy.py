"""What the DICOM node accepts: who may associate, which storage classes and transfer syntaxes, which instances are
predicted, and where results go.

Safe by default (issue 23): only the peers in ``--allow`` (AE title at host) may open an association; without
``--allow`` that is the PACS the results go to. An accepted instance is still skipped, with a reason that names no
patient, when its header says it is not a frontal chest radiograph (``ViewPosition``, ``BodyPartExamined``, PS3.3
C.8.11.5 and C.7.3.1) or when it is one of this node's own results (so a PACS that routes everything back cannot
start a loop).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass

from cxr.errors import CxrError

MANUFACTURER = "cxr"
"""The Manufacturer written into every result; an instance carrying it is this node's own output."""

FRONTAL_VIEWS = frozenset({"PA", "AP"})
"""View Position (0018,5101) defined terms of a frontal radiograph; NIH ChestX-ray14 holds PA and AP only."""
OTHER_VIEWS = frozenset(
    {"LL", "RL", "LATERAL", "LAT", "LLD", "RLD", "LAO", "RAO", "LPO", "RPO", "AP AXIAL", "PA AXIAL"}
)
"""Known non-frontal values, named in the skip reason (any other non-frontal value is reported as non-standard)."""
CHEST_PARTS = frozenset({"CHEST", "THORAX", "LUNG"})
"""Body Part Examined (0018,0015) values that mean the chest (PS3.16 Annex L); an absent value is accepted."""
MAX_AE_TITLE = 16
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}
"""The storage classes a chest radiograph arrives in (PS3.4 B.5), accepted with every transfer syntax pydicom can
decode here (:func:`decodable_transfer_syntaxes`)."""


def decodable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom knows a decoder for and whose codec is installed (native ones included)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    usable = []
    for syntax in AllTransferSyntaxes:
        try:
            if get_decoder(syntax).is_available:
                usable.append(str(syntax))
        except NotImplementedError:
            continue
    return usable


def parse_ae_title(value: str, where: str) -> str:
    title = value.strip()
    if not title or len(title) > MAX_AE_TITLE or "\\" in title or not title.isascii():
        raise CxrError(f"{where}: {value!r} is not an AE title (1-16 ASCII characters, no backslash)")
    return title


def _address(host: str, where: str) -> str:
    """The IPv4 address of ``host`` (names resolved once, at start-up), so a peer is matched by address."""
    try:
        return socket.gethostbyname(host)
    except OSError as error:
        raise CxrError(f"{where}: cannot resolve host {host!r} ({error.strerror or error})") from None


@dataclass(frozen=True)
class Destination:
    """Where results are sent by C-STORE: ``HOST:PORT:AET`` (``--send-to``)."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not 0 < int(parts[1]) < 65536:
            raise CxrError(f"--send-to {text!r}: expected HOST:PORT:AET, e.g. pacs.example.org:4242:ORTHANC")
        return cls(parts[0], int(parts[1]), parse_ae_title(parts[2], "--send-to"))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Peer:
    """A calling AE title allowed from one address (``--allow AET@HOST``; ``*`` as host: from anywhere)."""

    ae_title: str
    address: str

    @classmethod
    def parse(cls, text: str) -> Peer:
        title, at, host = text.rpartition("@")
        if not at or not host:
            raise CxrError(f"--allow {text!r}: expected AET@HOST, e.g. ORTHANC@10.0.0.5 (or ORTHANC@* for any host)")
        return cls(parse_ae_title(title, "--allow"), "*" if host == "*" else _address(host, "--allow"))


class AssociationPolicy:
    """Decides, at A-ASSOCIATE time, whether a calling AE title from an address may associate."""

    def __init__(self, peers: Iterable[Peer]):
        self.peers = frozenset(peers)
        if not self.peers:
            raise CxrError("the allow list is empty: no peer could send images")

    @classmethod
    def for_node(cls, allow: Iterable[str], destination: Destination | None) -> AssociationPolicy:
        """The peers of ``--allow``; without any, only the destination PACS (its AE title at its address)."""
        peers = [Peer.parse(text) for text in allow]
        if not peers and destination is None:
            raise CxrError("--allow AET@HOST is needed when results go by --stow-url only (no --send-to PACS)")
        if not peers:
            peers = [Peer(destination.ae_title, _address(destination.host, "--send-to"))]
        return cls(peers)

    def admits(self, ae_title: str, address: str) -> bool:
        title = ae_title.strip()
        return Peer(title, address) in self.peers or Peer(title, "*") in self.peers

    def __str__(self) -> str:
        return ", ".join(sorted(f"{peer.ae_title}@{peer.address}" for peer in self.peers))


def _text(header, keyword: str) -> str:
    try:
        value = header.get(keyword, "")
    except Exception:  # a malformed value: treated as absent, the pixels decide
        return ""
    return str(value or "").strip().upper()


def skip_reason(header) -> str | None:
    """Why an instance is acknowledged but not predicted, or ``None`` to predict it. The reason names header values
    from the standard's vocabularies only, never free text, so it can be logged."""
    if _text(header, "Manufacturer") == MANUFACTURER.upper() and _text(header, "BurnedInAnnotation") == "YES":
        return "a cxr result (loop guard)"
    view = _text(header, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        return f"view position {view} is not frontal" if view in OTHER_VIEWS else "view position is not frontal"
    part = _text(header, "BodyPartExamined")
    if part and part not in CHEST_PARTS:
        return "body part examined is not the chest"
    return None
