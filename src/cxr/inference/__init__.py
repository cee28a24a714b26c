"""Stage *inference*: using a trained model.

``cxr predict`` on a checkpoint or an ONNX export (``predict``, ``onnx``), ONNX export with its parity check
(``export``), Grad-CAM heatmaps (``cam``) and the web page + REST API (``serve`` with ``static/``).
"""
