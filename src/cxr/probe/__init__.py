"""Frozen embeddings and linear probes (``cxr embed``, ``cxr probe``): the standard comparison of image encoders.

An encoder (any cxr model artifact, an imported model, or a registered backbone by name) is frozen; every store image
becomes the vector its model's last linear layer reads (:mod:`cxr.probe.embed`). A logistic regression per label is
fitted on the training part's vectors, its L2 strength chosen on the validation part (:mod:`cxr.probe.linear`), and
written back as the model's final Linear, so the probe is an ordinary run that ``evaluate``, ``predict``, ``export``
and ``serve`` use (:mod:`cxr.probe.run`); with several label fractions, a label-efficiency table and plot
(:mod:`cxr.probe.efficiency`). This package sits above :mod:`cxr.evaluation` in the layers: it scores with the
evaluation's bootstrap and reads the training stack's precision probe.
"""
