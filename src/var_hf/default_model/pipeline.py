"""VAR pipeline: `DiffusionPipeline.from_pretrained(<this folder>, trust_remote_code=True)` loads it with diffusers'
generic loader (`pip install var-hf`); `var_hf.VARPipeline.from_pretrained(<this folder>)` needs no remote code."""

from var_hf.pipelines.pipeline_var import VARPipeline  # noqa: F401
