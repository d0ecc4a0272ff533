"""The foundation every layer may use: configuration (with the feature and target names),
the XNYS calendar, errors, statuses.

It imports nothing else of closecast: not closecast.models, tasks, flows or the command line.
"""
