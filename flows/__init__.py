"""Prefect flows: the pipeline and one flow per stage. They only call tasks."""
