"""Offline tools that make model artifacts, never imported on the request path:
``keras_rfb`` rebuilds RFB-320 in Keras from the upstream TensorFlow checkpoint and writes it as
a SavedModel (``inference-service export-savedmodel``), which
``inference_service.detection.savedmodel`` then serves."""
