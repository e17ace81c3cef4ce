"""Inference drivers: one image in memory (`predict`) or an archive on Ray Data (`pipeline`).

`config` is `InferConfig`; `worklist` lists, resumes and summarizes an archive a partition at a time;
`stages` holds the three Ray Data stages (read + decode tasks, model actors, postprocess tasks) and what
travels between them; `sizing` plans actors and CPUs; `pipeline` is the driver (list, resume, plan, run,
summarize). The stages themselves call the layers below: data.model_input, model.forward,
postprocess.scoring, outputs.rows.
"""
