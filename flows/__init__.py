"""The flows (finetune, sweep, predict, watcher, recovery) over the steps in nerflow.tasks, the pipeline's
order (`pipeline`), the operator's policy on what run starters send (`policy`), work queues and failure
hooks. `cli/` on top: the `nerflow` command, the server supervisor and work-pool set-up.
"""
