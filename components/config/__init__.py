"""Typed configuration: `base.StrictModel`, one model per stage, composed into `pipeline.PipelineConfig`;
`loading.load_config` reads YAML plus overrides. (Nothing is imported here, to keep stage configs free of cycles.)"""
