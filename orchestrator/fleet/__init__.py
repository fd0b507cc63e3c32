"""A session's runs fanned out over a Ray cluster (`orchestrate MATRIX --ray ...`): cluster.py
connects or starts one, node.py is what runs on each node, dispatch.py hands out the runs and
keeps the one session folder. Only imported when `--ray` is given: Ray is the optional `fleet`
extra."""
