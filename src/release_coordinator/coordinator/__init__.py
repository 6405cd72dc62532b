"""The data-release half: the Coordinator, its records, the task-service wire messages and
the kit for task services."""
