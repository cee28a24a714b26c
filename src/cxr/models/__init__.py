"""Stage *models*: the networks and the model artifact.

The model factory (architectures, heads, normalisation inside the model, the Grad-CAM target layer: ``factory``)
and the checkpoint as model artifact (metadata, loading, thresholds, ``model_input``: ``artifact``).
"""
