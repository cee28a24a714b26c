"""Stage *models*: the networks, their weights and the model artifact.

The model factory and registry (torchvision and timm backbones, heads, normalisation inside the model, the Grad-CAM
target layer: ``factory``, ``timm_backbones``), chest X-ray foundation backbones (``foundation``, ``foundation_spec``,
``rad_dino``, ``biomedclip``, ``clip_text``; the EVA-X and medical MAE ViTs: ``vit_registry``, ``vit_checkpoints``),
weights fetched on first use (``weights``, ``http_stream``), the typed artifact description (``spec``: ``ModelSpec``)
and the checkpoint as model artifact (``artifact``), and the importers (``xrv``: torchxrayvision; ``keras_import``:
the original project's Keras files and Keras CheXNet).
"""
