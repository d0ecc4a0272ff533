"""The foundation every layer may use: configuration, the XNYS calendar, errors, statuses.

It imports nothing from closecast, flows, tasks or models.
"""
