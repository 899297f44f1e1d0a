"""Model specs and loading: HF hub ids, local `save_pretrained` dirs, s3:// dirs, or an architecture to build."""
