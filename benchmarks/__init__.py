"""Side-by-side timings against the reference implementations (a folder of scripts, not shipped).

Run from the repository root: `python -m benchmarks.versus_diffusers`, `python -m benchmarks.load_benchmark`.
"""
