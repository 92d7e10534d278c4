import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def no_source_date_epoch_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set SourceDateEpoch= themselves: a CI that exports SOURCE_DATE_EPOCH would change every
    build's stage keys and the pinned keys of the pipeline's tests."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
