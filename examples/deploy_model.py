"""A long-running saga: deploy a machine-learning model behind a public endpoint.

A parallel saga (``SagaBuilder(parallel=True)``)::

    CheckModel ─┬─ ReserveGpuQuota ─┬─ DeployContainer ── WaitForHealth ── PublishEndpoint
                └─ StageWeights ────┘

Reserving GPUs and copying the model's weights into the cluster cache do not depend on each
other, so they run side by side; the container is deployed once both are done.

``WaitForHealth`` polls through the retry policy: each poll is one execution that fails
while the service is still starting, so the wait survives worker restarts (the saga is
checkpointed between polls) and gives up after a bounded number of polls. Each poll also
has a timeout, because a wedged container may never answer. When the service never gets
healthy, the rollback tears the container down and gives the GPUs back.

Real deployments take minutes; the delays here are shortened so the demo runs in seconds.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import timedelta

from pydantic import BaseModel, Field

from examples.db import session_maker
from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    SagaBuilder,
    SagaDefinition,
    SagaOrchestrator,
    SagaState,
    current_step,
)

__all__ = [
    "SAGA_NAME",
    "CheckModel",
    "ContainerPlatform",
    "DeployContainer",
    "DeployRequest",
    "DeployServices",
    "EndpointRouter",
    "GpuPool",
    "ModelRegistry",
    "PublishEndpoint",
    "QuotaExceeded",
    "ReserveGpuQuota",
    "ServiceStarting",
    "StageWeights",
    "UnknownModel",
    "WaitForHealth",
    "WeightsCache",
    "build_deploy_saga",
    "make_orchestrator",
]

SAGA_NAME = "deploy_model"

LATENCY_S = 0.005
HEALTH_POLL_TIMEOUT_S = 0.2
"""How long one health probe may take (seconds; minutes in real life)."""
HEALTH_POLLS = 5
"""Probes before giving up on a deployment."""


# --- the data -------------------------------------------------------------------------------


class DeployRequest(BaseModel):
    """The saga's initial data."""

    model: str
    version: str
    endpoint: str = Field(description="public route name, e.g. 'sentiment'")


class ModelRef(BaseModel):
    model: str
    version: str


class ModelInfo(BaseModel):
    model: str
    version: str
    image: str
    gpus: int


class StagedWeights(BaseModel):
    image: str
    cache_path: str


class GpuReservation(BaseModel):
    reservation_id: str
    gpus: int


class ContainerSpec(BaseModel):
    image: str
    gpu_reservation_id: str


class Deployment(BaseModel):
    deployment_id: str
    internal_url: str


class Route(BaseModel):
    endpoint: str
    internal_url: str


class PublishedEndpoint(BaseModel):
    public_url: str


class Healthy(BaseModel):
    polls: int


# --- in-memory fake services ------------------------------------------------------------------


class UnknownModel(Exception):
    """No such model version in the registry."""


class QuotaExceeded(Exception):
    """Not enough free GPUs."""


class ServiceStarting(Exception):
    """The container is up but not ready yet: poll again later."""


@dataclass
class ModelRegistry:
    models: dict[tuple[str, str], ModelInfo] = field(default_factory=dict)

    def add(self, model: str, version: str, *, image: str, gpus: int) -> None:
        self.models[model, version] = ModelInfo(
            model=model, version=version, image=image, gpus=gpus
        )

    async def get(self, model: str, version: str) -> ModelInfo:
        await asyncio.sleep(LATENCY_S)
        try:
            return self.models[model, version]
        except KeyError:
            raise UnknownModel(f"model {model}:{version} is not in the registry") from None


class GpuPool:
    """A cluster's GPU quota."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.reservations: dict[str, int] = {}
        self.released: dict[str, int] = {}
        """Released reservations and their GPU counts."""
        self._by_key: dict[str, str] = {}
        self._ids = itertools.count(1)

    @property
    def in_use(self) -> int:
        return sum(self.reservations.values())

    @property
    def free(self) -> int:
        return self.capacity - self.in_use

    async def reserve(self, *, idempotency_key: str, gpus: int) -> str:
        await asyncio.sleep(LATENCY_S)
        if idempotency_key in self._by_key:
            return self._by_key[idempotency_key]
        if gpus > self.free:
            raise QuotaExceeded(f"{gpus} GPUs requested, {self.free} free")
        reservation_id = f"gpu-{next(self._ids)}"
        self.reservations[reservation_id] = gpus
        self._by_key[idempotency_key] = reservation_id
        return reservation_id

    async def release(self, reservation_id: str) -> None:
        await asyncio.sleep(LATENCY_S)
        gpus = self.reservations.pop(reservation_id, None)
        if gpus is not None:
            self.released[reservation_id] = gpus


@dataclass
class WeightsCache:
    """The cluster's model-weights cache: staging copies a model's weights in."""

    staged: dict[str, str] = field(default_factory=dict)
    """Cache path -> image."""
    evicted: list[str] = field(default_factory=list)

    async def stage(self, info: ModelInfo) -> str:
        await asyncio.sleep(LATENCY_S)
        path = f"/cache/{info.model}/{info.version}"
        self.staged[path] = info.image  # staging the same weights again is a no-op
        return path

    async def evict(self, path: str) -> None:
        await asyncio.sleep(LATENCY_S)
        if self.staged.pop(path, None) is not None:
            self.evicted.append(path)


@dataclass
class ContainerRecord:
    deployment_id: str
    image: str
    gpu_reservation_id: str
    state: str = "starting"
    """``starting``, ``running`` or ``torn_down``."""
    probes: int = 0


class ContainerPlatform:
    """Runs containers. A container becomes healthy after ``boot_probes`` probes; one of
    the ``wedged_images`` never answers its health probe."""

    def __init__(self, *, boot_probes: int = 2, wedged_images: set[str] | None = None) -> None:
        self.boot_probes = boot_probes
        self.wedged_images = set(wedged_images or ())
        self.containers: dict[str, ContainerRecord] = {}
        self._by_key: dict[str, str] = {}
        self._ids = itertools.count(1)

    async def deploy(self, *, idempotency_key: str, spec: ContainerSpec) -> str:
        await asyncio.sleep(LATENCY_S)
        if idempotency_key not in self._by_key:
            deployment_id = f"dep-{next(self._ids)}"
            self.containers[deployment_id] = ContainerRecord(
                deployment_id, spec.image, spec.gpu_reservation_id
            )
            self._by_key[idempotency_key] = deployment_id
        return self._by_key[idempotency_key]

    async def probe(self, deployment_id: str) -> bool:
        """Whether the container answers its health check."""
        container = self.containers[deployment_id]
        container.probes += 1
        if container.image in self.wedged_images:
            await asyncio.sleep(3600)  # never answers; the step's timeout cancels the wait
        await asyncio.sleep(LATENCY_S)
        if container.probes > self.boot_probes:
            container.state = "running"
        return container.state == "running"

    async def tear_down(self, deployment_id: str) -> None:
        await asyncio.sleep(LATENCY_S)
        self.containers[deployment_id].state = "torn_down"


@dataclass
class EndpointRouter:
    routes: dict[str, str] = field(default_factory=dict)

    async def publish(self, endpoint: str, internal_url: str) -> str:
        await asyncio.sleep(LATENCY_S)
        self.routes[endpoint] = internal_url  # publishing the same route again is a no-op
        return f"https://api.example.com/v1/{endpoint}"


@dataclass
class DeployServices:
    registry: ModelRegistry
    gpus: GpuPool
    platform: ContainerPlatform
    router: EndpointRouter
    cache: WeightsCache = field(default_factory=WeightsCache)

    @classmethod
    def demo(cls) -> DeployServices:
        registry = ModelRegistry()
        registry.add("sentiment-small", "3", image="sentiment-small:3", gpus=1)
        registry.add("vision-xl", "2", image="vision-xl:2", gpus=4)
        return cls(
            registry=registry,
            gpus=GpuPool(capacity=8),
            platform=ContainerPlatform(boot_probes=2, wedged_images={"vision-xl:2"}),
            router=EndpointRouter(),
        )


# --- the steps ------------------------------------------------------------------------------


class CheckModel(BaseStep[ModelRef, ModelInfo]):
    """Look the model up; read-only, so nothing to compensate."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def execute(self, inp: ModelRef) -> ModelInfo:
        return await self.registry.get(inp.model, inp.version)


class ReserveGpuQuota(BaseStep[ModelInfo, GpuReservation]):
    """Reserve the GPUs the model needs; compensation releases them."""

    def __init__(self, gpus: GpuPool) -> None:
        self.gpus = gpus

    async def execute(self, inp: ModelInfo) -> GpuReservation:
        reservation_id = await self.gpus.reserve(
            idempotency_key=current_step().idempotency_key, gpus=inp.gpus
        )
        return GpuReservation(reservation_id=reservation_id, gpus=inp.gpus)

    async def compensate(self, inp: ModelInfo, out: GpuReservation) -> None:
        """Give the GPUs back to the pool."""
        await self.gpus.release(out.reservation_id)


class StageWeights(BaseStep[ModelInfo, StagedWeights]):
    """Copy the model's weights into the cluster cache (alongside the GPU reservation);
    compensation evicts them."""

    def __init__(self, cache: WeightsCache) -> None:
        self.cache = cache

    async def execute(self, inp: ModelInfo) -> StagedWeights:
        return StagedWeights(image=inp.image, cache_path=await self.cache.stage(inp))

    async def compensate(self, inp: ModelInfo, out: StagedWeights) -> None:
        """Free the cache space."""
        await self.cache.evict(out.cache_path)


class DeployContainer(BaseStep[ContainerSpec, Deployment]):
    """Start the serving container; compensation tears it down."""

    def __init__(self, platform: ContainerPlatform) -> None:
        self.platform = platform

    async def execute(self, inp: ContainerSpec) -> Deployment:
        deployment_id = await self.platform.deploy(
            idempotency_key=current_step().idempotency_key, spec=inp
        )
        return Deployment(
            deployment_id=deployment_id, internal_url=f"http://{deployment_id}.svc:8080"
        )

    async def compensate(self, inp: ContainerSpec, out: Deployment) -> None:
        """Tear the container down."""
        await self.platform.tear_down(out.deployment_id)


class WaitForHealth(BaseStep[Deployment, Healthy]):
    """One health probe per execution; the retry policy does the polling."""

    def __init__(self, platform: ContainerPlatform) -> None:
        self.platform = platform

    async def execute(self, inp: Deployment) -> Healthy:
        if not await self.platform.probe(inp.deployment_id):
            raise ServiceStarting(f"{inp.deployment_id} is not ready yet")
        return Healthy(polls=current_step().attempt)


class PublishEndpoint(BaseStep[Route, PublishedEndpoint]):
    """Route public traffic to the new deployment (the last step: nothing to undo)."""

    def __init__(self, router: EndpointRouter) -> None:
        self.router = router

    async def execute(self, inp: Route) -> PublishedEndpoint:
        return PublishedEndpoint(
            public_url=await self.router.publish(inp.endpoint, inp.internal_url)
        )


# --- the definition -------------------------------------------------------------------------


def model_ref(ctx: InputContext) -> ModelRef:
    request = DeployRequest.model_validate(ctx.initial_data)
    return ModelRef(model=request.model, version=request.version)


def model_info(info: ModelInfo) -> ModelInfo:
    return info


def container_spec(gpus: GpuReservation, weights: StagedWeights) -> ContainerSpec:
    """The join: one argument per step in ``depends_on``."""
    return ContainerSpec(image=weights.image, gpu_reservation_id=gpus.reservation_id)


def deployment(out: Deployment) -> Deployment:
    return out


def route(ctx: InputContext) -> Route:
    # Annotated InputContext: it waits for WaitForHealth but reads the start data.
    request = DeployRequest.model_validate(ctx.initial_data)
    deployed = Deployment.model_validate(ctx.step_outputs["DeployContainer"])
    return Route(endpoint=request.endpoint, internal_url=deployed.internal_url)


def build_deploy_saga(services: DeployServices) -> SagaDefinition:
    """The deployment saga, with demo-sized timeouts and polling."""
    saga = SagaBuilder(parallel=True)
    check = saga.add_step(
        step=CheckModel(services.registry), input_map=model_ref, timeout=timedelta(seconds=5)
    )
    gpus = saga.add_step(
        step=ReserveGpuQuota(services.gpus),
        input_map=model_info,
        depends_on=check,
        timeout=timedelta(seconds=5),
        compensation_timeout=timedelta(seconds=5),
        compensation_retry_policy=FixedRetry(max_attempts=10, delay=0.1),
    )
    weights = saga.add_step(
        step=StageWeights(services.cache),
        input_map=model_info,
        depends_on=check,
        timeout=timedelta(seconds=30),
        retry_policy=FixedRetry(max_attempts=3, delay=0.1),
    )
    deploy = saga.add_step(
        step=DeployContainer(services.platform),
        input_map=container_spec,
        depends_on=[gpus, weights],
        timeout=timedelta(seconds=10),
        retry_policy=FixedRetry(max_attempts=3, delay=0.1),
        compensation_timeout=timedelta(seconds=10),
    )
    health = saga.add_step(
        step=WaitForHealth(services.platform),
        input_map=deployment,
        depends_on=deploy,
        timeout=timedelta(seconds=HEALTH_POLL_TIMEOUT_S),
        # A real rollout might poll every 15 s for 20 minutes: FixedRetry(80, 15).
        retry_policy=FixedRetry(max_attempts=HEALTH_POLLS, delay=0.05),
    )
    saga.add_step(
        step=PublishEndpoint(services.router),
        input_map=route,
        depends_on=health,
        timeout=timedelta(seconds=5),
    )
    return saga.build()


def make_orchestrator(database_url: str) -> SagaOrchestrator[SagaState]:
    """An orchestrator running only the deployment saga (``sagad --app
    examples.deploy_model:make_orchestrator``). Its services are fresh in-memory fakes."""
    orchestrator: SagaOrchestrator[SagaState] = SagaOrchestrator(
        session_maker=session_maker(database_url)
    )
    orchestrator.register(SAGA_NAME, build_deploy_saga(DeployServices.demo()))
    return orchestrator
