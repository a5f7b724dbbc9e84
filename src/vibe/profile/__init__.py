"""Measure what placement needs: each GPU's expert latency curve (hardware.py, torch
imported lazily inside it), vendor tables turned into cluster files (tables.py),
monotone fits (fit.py), telemetry (telemetry.py), profile comparison (compare.py), and
per-layer expert loads of real models, from their routers (routing.py).

Kept free of heavy imports: `import vibe.profile` never imports torch.
"""
