"""The ML library of the pipeline: torch, transformers, datasets, deepspeed. Never imports prefect or mlflow."""
