"""Stage *imaging*: the one decode and preprocessing path of a radiograph, shared by ``prepare`` and inference.

PNG/JPEG decoding, crop and area resize (``decode``) and DICOM's display pipeline (``dicom``).
"""
