"""The Lightning side: data, tasks, the module and the `strata` command."""
