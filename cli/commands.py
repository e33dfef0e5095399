"""Placeholder replaced below."""
import click


@click.group()
@click.version_option("0.1.0", prog_name="shoal")
def shoal() -> None:
    """shoal: a container orchestrator in the spirit of Docker swarm mode."""
