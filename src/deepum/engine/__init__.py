"""The torch and CUDA glue: executes what the core decides (never imports api, report or bench)."""
