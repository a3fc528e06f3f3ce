"""diffusers pipelines of var_hf (installed as `var_hf.pipelines`). The scheduler lives in `var_hf.scheduling_var`."""

from var_hf.pipelines.pipeline_var import VARPipeline, VARPipelineOutput
from var_hf.pipelines.pipeline_var_collaborative import VARCollaborativePipeline

__all__ = ["VARCollaborativePipeline", "VARPipeline", "VARPipelineOutput"]
