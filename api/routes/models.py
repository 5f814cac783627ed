"""/v1/models: the base models offered here and the adapters trained so far."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from api.deps import CurrentOwner, SessionDep, SettingsDep, visible_to
from api.errors import not_found
from api.schemas import ModelPublic, ModelsPublic, unix
from loraq.base_models import offered_models
from models import Job, JobStatus

router = APIRouter(prefix="/v1/models", tags=["models"])


def _all_models(session, principal, settings) -> list[ModelPublic]:
    started = int(settings.model_cache_dir.stat().st_mtime) if settings.model_cache_dir.exists() else 0
    data = [
        ModelPublic(id=name, created=started, owned_by="loraq", root=entry.source if name != entry.source else None)
        for name, entry in offered_models(settings).items()
    ]
    jobs = session.scalars(
        select(Job).where(Job.status == JobStatus.succeeded, visible_to(principal, Job)).order_by(Job.seq.desc())
    )
    # A continued job's parent is the model it started from; root is always the base model.
    data += [
        ModelPublic(
            id=j.fine_tuned_model, created=unix(j.finished_at), owned_by=j.owner, root=j.model,
            parent=j.parent["model"] if j.parent else j.model,
        )
        for j in jobs
    ]  # fmt: skip
    return data


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep, principal: CurrentOwner, settings: SettingsDep):
    """Base models (name and source) and your fine-tuned adapters."""
    return ModelsPublic(data=_all_models(session, principal, settings))


@router.get("/{model_id:path}", response_model=ModelPublic)
def retrieve_model(model_id: str, session: SessionDep, principal: CurrentOwner, settings: SettingsDep):
    """One model by name."""
    for model in _all_models(session, principal, settings):
        if model.id == model_id:
            return model
    raise not_found("model", model_id)
