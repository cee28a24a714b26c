"""cxr: chest X-ray classification from raw radiographs to evaluated, explainable, deployable models.

NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR, RSNA Pneumonia and SIIM-ACR on one label vocabulary;
CNNs, any timm architecture and chest X-ray foundation models (RAD-DINO, BiomedCLIP, EVA-X, medical MAE), fine-tuned,
linear-probed on frozen embeddings or zero-shot; torchxrayvision's and the original project's Keras models imported;
evaluation with patient-level CIs and per-group gaps; ONNX, a web server and a DICOM node for deployment.
"""

__version__ = "0.1.0"
