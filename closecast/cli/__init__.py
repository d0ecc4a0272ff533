"""The `closecast` command: its options, the commands, serve, alerts, status, the temporary API."""
