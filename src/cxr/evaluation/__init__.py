"""Stage *evaluation*: how good a model is, with honest uncertainty.

Pure metrics (``metrics``), the patient-level bootstrap (``bootstrap``), thresholds chosen on validation
(``thresholds``), reading anyone's predictions (``predictions``), ``cxr evaluate`` (``evaluate``, ``scoring``,
``stores``: a run on another store) with typed results (``results``: what ``metrics.json`` holds), performance by
patient group with gap tests (``groups``, ``subgroups``, ``subgroup_report``), Google's expert labels (``expert``),
reports and the published reference figures (``report``, ``tables``, ``references``), ``cxr compare``
(``compare``) and ``cxr localize``, class activation maps scored against boxes (``localize``).
"""
