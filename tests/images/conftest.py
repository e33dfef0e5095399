from tests.support.registry import registry  # noqa: F401  (a module-scoped docker-registry fixture)
