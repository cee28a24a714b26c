"""Stage *evaluation*: how good a model is, with honest uncertainty.

Pure metrics (``metrics``), the patient-level bootstrap (``bootstrap``), thresholds chosen on validation
(``thresholds``), reading anyone's predictions (``predictions``), ``cxr evaluate`` (``evaluate``), reports and the
published reference figures (``report``, ``references``), ``cxr compare`` (``compare``) and ``cxr localize``,
Grad-CAM scored against boxes (``localize``).
"""
