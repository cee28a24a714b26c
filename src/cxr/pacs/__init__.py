"""``cxr dicom-node``: the model inside a hospital's PACS.

Images arrive by DICOM C-STORE (:mod:`cxr.pacs.node`, pynetdicom), are screened by their header
(:mod:`cxr.pacs.policy`), predicted with the model's own decode and preprocessing path, and the results go back to the
PACS by C-STORE (:mod:`cxr.pacs.sender`) as a Structured Report and, on request, a Secondary Capture with the Grad-CAM
overlay burned in (:mod:`cxr.pacs.results`, highdicom). Nothing a node receives is written to disk or logged beyond
sizes, timings, status and hashes.
"""
