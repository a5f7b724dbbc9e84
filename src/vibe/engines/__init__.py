"""Importers and exporters of real engines' files (SGLang, TensorRT-LLM, vLLM, ESFT)."""
