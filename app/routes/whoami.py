"""``/v1/whoami``: the principal a bearer token stands for (the console shows who is signed in)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from app.deps import PrincipalDep, SettingsDep
from app.errors import AuthUnavailable, Unauthorized, problem_responses

router = APIRouter(prefix="/v1", tags=["access"])


class WhoAmI(BaseModel):
    name: str
    scopes: list[str]
    admin: bool
    auth_disabled: bool


@router.get(
    "/whoami", response_model=WhoAmI, responses=problem_responses(Unauthorized, AuthUnavailable)
)
def whoami(principal: PrincipalDep, settings: SettingsDep) -> WhoAmI:
    """The caller's principal and scopes (any valid token; no scope needed)."""
    return WhoAmI(
        name=principal.name,
        scopes=sorted(scope.value for scope in principal.scopes),
        admin=principal.is_admin,
        auth_disabled=settings.auth_disabled,
    )
