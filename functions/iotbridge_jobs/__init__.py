"""Bulk commands (jobs): the job record in shadows, and the fan-out function that queues one page of targets."""
