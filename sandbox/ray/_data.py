"""`transform_batches`: a generated transform over a Ray Data `Dataset`, each batch in a sandbox.

Ray Data splits the dataset into batches; a small task per batch hands the batch's rows to
an actor of the pool, which runs ``transform(rows)`` in its warm sandbox
(`Sandbox.transform`). The output rows come back, are validated against ``output_model``
and become the output batch. A failing run (or an invalid row) fails the pipeline with
`TransformFailed` carrying the run's error.

Records: the pool's workers send them to a `RecordActor`. A pool whose key holder is the
driver (``records=JsonlSink(...)``) is refused here, since the batches do not pass through
the driver.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import ray
from pydantic import BaseModel
from ray.exceptions import ActorUnavailableError, RayActorError

from sandbox.errors import ConfigurationError, SandboxError
from sandbox.transform import validate_rows

if TYPE_CHECKING:
    from ray.data import Dataset

    from sandbox.ray._pool import RaySandboxPool


class TransformFailed(SandboxError, RuntimeError):
    """A batch's transform failed: the message holds the run's error (or the invalid row)."""


class _SandboxedBatch:
    """The map_batches function: one pool run per batch, actors taken in turn."""

    def __init__(self, actors: tuple[Any, ...], spec: str, code: str, output_model: type[BaseModel] | None) -> None:
        self.actors = actors
        self.spec = spec
        self.code = code
        self.output_model = output_model

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        rows = batch.to_pylist()
        actor = self.actors[next(_turns) % len(self.actors)]
        try:
            reply = ray.get(actor.transform.remote(self.spec, self.code, rows))
        except (RayActorError, ActorUnavailableError) as exc:
            raise TransformFailed(f"the worker running this batch was lost ({type(exc).__name__})") from None
        result = reply.result
        if not result.ok:
            if result.invalid is not None:
                raise TransformFailed(f"transform() output is invalid: {result.invalid.message}")
            error = result.run.error
            raise TransformFailed(f"transform() failed: {error.kind}: {error.type}: {error.message}")
        invalid, out = validate_rows(result.rows, self.output_model)
        if invalid is not None:
            raise TransformFailed(f"transform() output is invalid: {invalid.message}")
        if self.output_model is not None:
            out = [row.model_dump() for row in out]
        return pa.Table.from_pylist(out)


_turns = itertools.count()


def transform_batches(
    dataset: Dataset,
    code: str,
    *,
    pool: RaySandboxPool,
    output_model: type[BaseModel] | None = None,
    batch_size: int = 1024,
    spec: str | None = None,
    num_cpus: float = 0.25,
) -> Dataset:
    """A lazy `Dataset` of ``transform(rows)`` applied to each batch of ``dataset`` in ``pool``.

    ``code`` defines ``transform(rows)`` (a list of dicts in, a list of dicts out);
    ``output_model`` (a pydantic model) validates every output row; ``num_cpus`` is what Ray
    Data reserves per batch task (the run itself uses the pool's actors). Host mistakes
    raise here; a failed run raises `TransformFailed` when the dataset is consumed.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be str, not {type(code).__name__}")
    if output_model is not None and not (isinstance(output_model, type) and issubclass(output_model, BaseModel)):
        raise TypeError("output_model must be a pydantic BaseModel subclass")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be an int >= 1, got {batch_size!r}")
    name = pool._spec_name(spec)
    if pool._sink is not None:
        raise ConfigurationError(
            "transform_batches needs a pool whose records go to a RecordActor (records=RecordActor.start(...)): "
            "the batches do not pass through the driver, where this pool's record sink is"
        )
    return dataset.map_batches(
        _SandboxedBatch(pool.actors, name, code, output_model),
        batch_size=batch_size, batch_format="pyarrow", num_cpus=num_cpus,
    )
