"""Stage *imaging*: the one decode and preprocessing path of a radiograph, shared by ``prepare`` and inference.

PNG/JPEG decoding, crop and area resize (``decode``), DICOM's display pipeline (``dicom``), the conversions to 8-bit
grey both decoders share (``pixels``) and the store's crop and box geometry (``geometry``).
"""
