"""Every hostile image of the corpus, through the service (real decoder, real admission
control, in-memory store, fake detector): its documented answer, and nothing stored unless
it is accepted."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.fakes import MakeService, RecordingStore
from support.hostile import HostileCase, corpus

from inference_service.admission import AdmissionController
from inference_service.domain import ModelInput, State
from inference_service.errors import InferenceError
from inference_service.images.decoder import PillowImageDecoder
from inference_service.service import InferenceService, RequestLimits
from inference_service.settings import Settings

# The documented answers are those of the default limits, whatever the environment says.
DEFAULTS = Settings.model_construct()


@pytest.fixture(scope="module")
def executor():
    with ThreadPoolExecutor(2) as pool:
        yield pool


def with_default_limits(
    make_service: MakeService, store: RecordingStore, executor: ThreadPoolExecutor
) -> InferenceService:
    """The shared builder's service with the real decoder, admission control and limits of the
    default settings."""
    decoder = PillowImageDecoder(
        max_pixels=DEFAULTS.max_image_pixels, max_decoded_bytes=DEFAULTS.max_decoded_bytes
    )
    admission = AdmissionController(
        estimate=decoder.decoded_bytes,
        executor=executor,
        memory_budget_bytes=DEFAULTS.image_memory_budget_bytes,
        max_admitted=DEFAULTS.workers + DEFAULTS.work_queue_size,
        wait_s=DEFAULTS.admission_wait_s,
    )
    return make_service(
        store=store,
        decode=decoder.decode,
        admission=admission,
        limits=RequestLimits(
            max_content_bytes=DEFAULTS.max_content_bytes,
            max_image_pixels=DEFAULTS.max_image_pixels,
        ),
    )


@pytest.mark.parametrize("case", corpus(), ids=lambda case: case.name)
async def test_hostile_image_gets_its_documented_answer(
    case: HostileCase, make_service: MakeService, executor: ThreadPoolExecutor
) -> None:
    store = RecordingStore()
    service = with_default_limits(make_service, store, executor)
    model_input = ModelInput(id=f"hostile-{case.name}", content=case.content)
    if case.code == "OK":
        invocation = await service.invoke(model_input)
        assert invocation.state is State.SUCCEEDED
        assert invocation.output is not None
        assert (invocation.output.image_width, invocation.output.image_height) == case.size
        assert (await service.get_invocation(model_input.id)).input.content == case.content
        return
    with pytest.raises(InferenceError) as raised:
        await service.invoke(model_input)
    assert raised.value.code == case.code
    assert re.search(case.message, str(raised.value)), str(raised.value)
    assert store.claimed == []
    assert await store.get(model_input.id) is None
