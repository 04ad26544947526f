"""A backend's transfer syntax policy: which syntaxes it wants, and when the router transcodes.

```toml
[backends.research]
type = "dimse"
transfer_syntaxes = ["JPEG2000Lossless", "ExplicitVRLittleEndian"]   # in order of preference
transcode = "when-refused"   # default; "always": the first the peer accepts; "never": as received or not at all
keep_uid_on_lossy = false    # a lossy target gets a new SOP Instance UID unless this is true
```

``when-refused`` sends each instance as received when the peer accepts that syntax, and
otherwise in the first syntax of the list the peer accepts (without a list: Explicit, then
Implicit VR Little Endian). ``always`` sends every instance in the first syntax of the list
the peer accepts. ``never`` sends instances only as received. A lossy syntax
(``JPEGBaseline8Bit``, ``JPEG2000``, ``JPEGLSNearLossless``) is used only when the list names it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, model_validator

from router.transcode.syntaxes import NATIVE, describe, parse_syntax

SyntaxName = Annotated[str, AfterValidator(lambda text: str(parse_syntax(text)))]


class TranscodePolicy(BaseModel):
    """The keys every storing backend takes (mixed into its config model)."""

    transfer_syntaxes: list[SyntaxName] = []
    transcode: Literal["when-refused", "always", "never"] = "when-refused"
    keep_uid_on_lossy: bool = False

    @model_validator(mode="after")
    def _always_needs_a_list(self):
        if self.transcode == "always" and not self.transfer_syntaxes:
            raise ValueError('transcode = "always" needs transfer_syntaxes, the syntaxes to send in')
        return self

    def proposed_syntaxes(self) -> list[str]:
        """What to offer the peer besides an instance's own syntax, in order of preference
        (with ``never`` too, so that an association is made and a refusal is told apart
        from an unreachable peer)."""
        return list(self.transfer_syntaxes) or list(NATIVE)

    def choose(self, received: str, accepted: set[str]) -> str | None:
        """The syntax to send an instance received in ``received`` in, given the syntaxes the
        peer accepted for its SOP class; None when none will do."""
        candidates = self.candidates(received, accepted)
        return candidates[0] if candidates else None

    def candidates(self, received: str, accepted: set[str]) -> list[str]:
        """The syntaxes to try, best first: the next one is for an instance the first cannot
        hold (no pixel data to compress, a frame too small for a codec)."""
        if self.transcode == "never":
            return [received] if received in accepted else []
        ordered = [s for s in self.proposed_syntaxes() if s in accepted]
        if self.transcode != "always" and received in accepted:
            return [received]
        return ordered

    def refusal(self, received: str, accepted: set[str]) -> str:
        """Why :meth:`choose` found nothing, for the quarantine reason."""
        offered = ", ".join(sorted(describe(s) for s in accepted)) or "nothing"
        if self.transcode == "never":
            return f'the peer accepts only {offered}; the instance is {describe(received)} and transcode = "never"'
        wanted = ", ".join(describe(s) for s in self.proposed_syntaxes())
        return f"the peer accepts only {offered}; the instance is {describe(received)} and the router may send it in {wanted}"
