"""manager: the replicated store, API handlers, orchestrators, scheduler, dispatcher, CA."""
