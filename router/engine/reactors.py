"""Event-driven reactor loops for pynetdicom 3.0.4 (owned code, declared in router/engine/changes.py).

Stock pynetdicom polls: its DUL reactor sleeps 1 ms whenever a pass found nothing to do,
and its association reactor sleeps 1 ms on every pass, so each DIMSE message waits two or
three ticks (measured here: most of an association's wall time). These replacements wait
for the thing they poll for instead:

- the DUL reactor waits in ``poll()`` on its socket and an eventfd that is written
  whenever another thread queues a primitive (``to_provider_queue``) or an event
  (``event_queue``: a transport error on a lent socket) for it, or it is told to stop; it
  does not wait while a primitive is queued;
- the association reactor waits on an Event set whenever the DUL completes a DIMSE message
  or queues an ACSE primitive for it, or the association is killed. A DIMSE message that a
  ``send_*()`` call is waiting for (the reactor's checkpoint is cleared) does not wake it:
  the call takes the message itself, and the reactor is woken when the checkpoint is set
  again if a message is left.

Each DUL pass runs under the DUL's ``_socket_lock``, and while the socket is lent to a
delivering thread (:mod:`router.engine.socket_loans`) the reactor neither waits on it nor
reads it, and takes it back as soon as anything is queued for its state machine.

Every wait is bounded: by :data:`MAX_WAIT` after activity, doubling while a reactor finds
nothing to do up to :data:`MAX_IDLE_WAIT`, and never past the expiry of the timer the
reactor acts on (ARTIM for the DUL, the idle timer for the association), so timers fire
on time and a flag set without a wake-up is still seen within :data:`MAX_IDLE_WAIT`. A
thousand idle associations cost a few hundred wake-ups a second, not a hundred thousand.

The association reactor also closes a race in the stock loop (pynetdicom PR #351 narrowed
it, 3.0.4 still has it): a ``send_*()`` call could clear the pause checkpoint just after the
reactor passed it, and the reactor would then take the peer's response off the queue and
drop it, leaving ``send_*()`` to wait for ``dimse_timeout``. Here the reactor re-checks the
checkpoint after unpausing and never touches the queue while paused.

A P-DATA the user queues once a release has begun (Evt9 in Sta7) is dropped with an error
line instead of ending the socket thread with an unhandled InvalidEventError, and a
requestor whose association was rejected before its association thread checked the
connection is told it was rejected, not aborted (:class:`_AnsweredSocket`).

The loop bodies are copies of pynetdicom 3.0.4's ``DULServiceProvider.run_reactor`` and
``Association._run_reactor`` with only the waits, the re-check and the socket lock
changed: re-diff them on any pynetdicom upgrade (:mod:`router.engine.seam` leaves them out when that code changed).
"""

from __future__ import annotations

import os
import queue
import select
import socket
import ssl
import threading
import time
from typing import Any

import structlog
from pynetdicom import evt
from pynetdicom.association import LOGGER as ASSOC_LOGGER
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.fsm import TRANSITION_TABLE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT, A_RELEASE

from router.engine.association_log import association_fields, log_association_error
from router.engine.classes import RouterACSE, RouterAssociation, RouterDIMSE, RouterDUL, RouterStateMachine

ROUTER_LOG = structlog.get_logger("router.engine")

MAX_WAIT = 0.02
MAX_IDLE_WAIT = 10.24


def _bounded_by(timer, wait: float) -> float:
    """``wait``, shortened to end when a running pynetdicom ``Timer`` expires (at least 1 ms)."""
    if timer.timeout is None or timer._start_time is None or timer._end_time is not None:
        return wait
    return min(wait, max(timer.remaining, 0.001))


_stock: dict[str, Any] = {
    "do_action": RouterStateMachine.do_action,
    "get_msg": DIMSEServiceProvider.get_msg,
}


class NotifyingQueue(queue.Queue):
    """A Queue that calls ``notify()`` after every put."""

    def __init__(self, notify):
        super().__init__()
        self._notify = notify

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        self._notify()


# -- DUL --------------------------------------------------------------------------------


def _dul_setup(self) -> None:
    self._wakeup = Wakeup()
    self._poller = None
    self._polled = None
    self.to_provider_queue = NotifyingQueue(lambda: _dul_wake_unless_own_thread(self))
    self.event_queue = NotifyingQueue(lambda: _dul_wake_unless_own_thread(self))
    self._socket_lock = threading.Lock()
    self._socket_lent = False


class Wakeup:
    """An eventfd another thread writes to make the reactor run a pass: one descriptor per
    association (a socket pair took two), safe to write after it is closed."""

    __slots__ = ("fd", "_lock")

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()

    def set(self) -> None:
        with self._lock:
            if self.fd >= 0:
                try:
                    os.eventfd_write(self.fd, 1)
                except OSError:
                    pass

    def clear(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except OSError:
            pass  # nothing pending

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def _dul_wake(self) -> None:
    """Make the reactor run a pass now (safe from any thread, after close too)."""
    self._wakeup.set()


def _dul_wake_unless_own_thread(self) -> None:
    """Wake the reactor for a primitive queued by another thread; one it queued itself (a
    C-STORE response answered on the socket thread) it sees on its next pass anyway."""
    if threading.current_thread() is not self:
        self._wakeup.set()


def _dul_wait(self, timeout: float) -> bool:
    """Wait until the socket is readable (unless it is lent), a wake-up arrives, or ``timeout``
    passes; whether anything arrived."""
    raw = getattr(self.socket, "socket", None) if self.socket is not None else None
    if raw is not None and self._socket_lent:
        raw = None
    if raw is not None and isinstance(raw, ssl.SSLSocket):
        try:
            if raw.pending():
                return True
        except (OSError, ValueError):
            pass
    try:
        poller = _poller_for(self, raw)
        ready = poller.poll(int(timeout * 1000))
    except (OSError, ValueError):  # the socket was closed under us
        self._poller = None
        time.sleep(0.001)
        return True
    if any(fd == self._wakeup.fd for fd, _ in ready):
        self._wakeup.clear()
    return bool(ready)


def _poller_for(dul, raw):
    """The DUL's poll object, watching its wake-up and ``raw`` (None: the wake-up alone)."""
    fd = raw.fileno() if raw is not None else None
    if dul._poller is None or dul._polled != fd:
        poller = select.poll()
        poller.register(dul._wakeup.fd, select.POLLIN)
        if fd is not None and fd >= 0:
            poller.register(fd, select.POLLIN | select.POLLPRI)
        dul._poller, dul._polled = poller, fd
    return dul._poller


def _dul_run_reactor(self) -> None:
    """pynetdicom 3.0.4 ``run_reactor`` with the idle sleep replaced by :func:`_dul_wait`."""
    try:
        self._idle_timer.start()
        idle = False
        wait = MAX_WAIT
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True

            if idle:
                woke = _dul_wait(self, _bounded_by(self.artim_timer, wait))
                wait = MAX_WAIT if woke else min(wait * 2, MAX_IDLE_WAIT)
            else:
                wait = MAX_WAIT

            if self._kill_thread:
                break

            with self._socket_lock:
                idle = _dul_pass(self)
            if idle is None:
                return
    finally:
        self._wakeup.close()
        self._poller = None
        for hook in _exit_hooks:
            try:
                hook(self)
            except Exception as exc:  # a clean-up must not keep the association from ending
                ROUTER_LOG.exception(
                    "clean-up at the end of an association failed", error=repr(exc), **association_fields(self.assoc)
                )
        self.assoc.wake_reactor()


def _dul_pass(self) -> bool | None:
    """One pass of the reactor: queue the event for a primitive the user queued or for a
    PDU on the socket, then act on one event. Whether the reactor may wait before the next
    pass (it found nothing to do); None when the thread must end.

    The socket is read only once every queued event has been acted on (stock pynetdicom
    reads first, so an invalid PDU's abort waited while the socket thread blocked reading
    whatever the peer sent after it).

    The caller holds ``_socket_lock``, the socket's owner for the pass (see
    :mod:`router.engine.socket_loans`): a lent socket is not read, and is taken back as soon
    as anything is queued for the state machine.
    """
    if self._socket_lent and not (self.to_provider_queue.empty() and self.event_queue.empty()):
        self._socket_lent = False

    if self.artim_timer.expired:
        self.event_queue.put("Evt18")

    try:
        if self._process_recv_primitive():
            pass
        elif not self._socket_lent and self.event_queue.empty() and self._is_transport_event():
            self._idle_timer.restart()
    except Exception as exc:
        abort_after_error(self, exc, "reading the connection")
        return None

    try:
        event = self.event_queue.get(block=False)
    except queue.Empty:
        return self.to_provider_queue.empty()

    try:
        self.state_machine.do_action(event)
    except Exception as exc:
        abort_after_error(self, exc, f"event {event} in state {self.state_machine.current_state}")
        return None
    return False


def abort_after_error(dul, exc: BaseException, where: str) -> None:
    """End an association whose socket thread met an error it cannot act on (a PDU pynetdicom
    cannot turn into a primitive, an event invalid in the current state): log it, send an
    A-ABORT (service provider, reason not specified) if the connection still takes it,
    shut the connection down and stop both threads.

    Stock pynetdicom lets such an error end the socket thread with a traceback, leaving the
    association thread and the socket behind until their timeouts, or for good.
    """
    log_association_error(dul.assoc, exc, where)
    raw = getattr(dul.socket, "socket", None) if dul.socket is not None else None
    if raw is not None:
        try:
            abort_pdu = A_ABORT_RQ()
            abort_pdu.source = 0x02
            abort_pdu.reason_diagnostic = 0x00
            raw.sendall(abort_pdu.encode())
        except (OSError, ValueError):
            pass
        try:
            socket.socket.shutdown(raw, socket.SHUT_RDWR)
        except (OSError, ValueError, TypeError):
            pass
    dul.assoc.is_aborted = True
    dul.assoc.is_established = False
    dul.assoc._kill = True
    dul._kill_thread = True
    wake = getattr(dul.assoc, "wake_reactor", None)  # the event-driven reactor's; stock polls
    if wake is not None:
        wake()


def _drop_late_p_data(dul) -> None:
    """Drop the router's own P-DATA (a C-CANCEL, say) queued to send once the association's
    release had begun: a warning, since nothing the peer sent is lost."""
    try:
        dul.to_provider_queue.get(False)
    except queue.Empty:
        return
    ROUTER_LOG.warning(
        "dropped a P-DATA queued after the association's release began",
        state=dul.state_machine.current_state,
        **association_fields(dul.assoc),
    )


def _do_action(self, event: str) -> None:
    """``StateMachine.do_action``, which never ends the socket thread with an exception.

    - A P-DATA queued once the association is being released (Evt9 outside Sta6/Sta8) is
      dropped with a log line and the release goes on. Stock pynetdicom raised, ending the
      socket thread, and the association hung until its timeouts; the P-DATA could not be
      sent anyway (a C-CANCEL racing a release, say).
    - Any other error in an action (an association request pynetdicom cannot turn into a
      primitive, an event invalid in the state) aborts the association with one log line
      naming the peer. Stock pynetdicom let it end the socket thread, leaving the peer
      unanswered and the socket open.
    """
    if event == "Evt9" and (event, self.current_state) not in TRANSITION_TABLE:
        _drop_late_p_data(self.dul)
        return
    try:
        _stock["do_action"](self, event)
    except Exception as exc:
        abort_after_error(self.dul, exc, f"event {event} in state {self.current_state}")


def install_state_machine_guard() -> None:
    RouterStateMachine.do_action = _do_action


_exit_hooks: list = []


def on_reactor_exit(hook) -> None:
    """Run ``hook(dul)`` on the socket thread once it has handled its last PDU."""
    if hook not in _exit_hooks:
        _exit_hooks.append(hook)


def _dul_kill(self) -> None:
    self._kill_thread = True
    self.wake()


def _dul_stop(self) -> bool:
    """pynetdicom's ``stop_dul``, waking the reactor and polling its exit every 1 ms."""
    if self.state_machine.current_state == "Sta1":
        self._kill_thread = True
        self.wake()
        while self.is_alive():
            self.join(0.001)
        return True
    return False


# -- Association ------------------------------------------------------------------------


class Checkpoint(threading.Event):
    """The association's ``_reactor_checkpoint``: set again, it wakes the reactor if a
    DIMSE message arrived while it was cleared."""

    def __init__(self, assoc):
        super().__init__()
        self._assoc = assoc

    def set(self) -> None:
        super().set()
        if not self._assoc.dimse.msg_queue.empty():
            self._assoc._reactor_wake.set()


def _wake_unless_a_send_waits(assoc) -> None:
    """A DIMSE message arrived: wake the reactor, unless a ``send_*()`` call has paused it and
    takes the message itself (:class:`Checkpoint` wakes it afterwards if one is left)."""
    if assoc._reactor_checkpoint.is_set():
        assoc._reactor_wake.set()


def _assoc_setup(self) -> None:
    self._reactor_wake = threading.Event()
    self._reactor_checkpoint = Checkpoint(self)
    self._reactor_checkpoint.set()
    self.dimse.msg_queue = NotifyingQueue(lambda: _wake_unless_a_send_waits(self))
    self.dul.to_user_queue = NotifyingQueue(self._reactor_wake.set)


def _assoc_wake(self) -> None:
    self._reactor_wake.set()


def _assoc_run_reactor(self) -> None:
    """pynetdicom 3.0.4 ``Association._run_reactor``, event-driven, with the pause race closed.

    While it waits the reactor counts as paused (it touches no queue), so a ``send_*()``
    call proceeds at once; after unpausing it re-checks the checkpoint before reading the
    DIMSE queue.
    """
    wake = self._reactor_wake
    idle = False
    wait = MAX_WAIT
    while not self._kill:
        self._is_paused = True
        if idle:
            woke = wake.wait(_bounded_by(self.dul._idle_timer, wait))
            wait = MAX_WAIT if woke else min(wait * 2, MAX_IDLE_WAIT)
        else:
            wait = MAX_WAIT
        wake.clear()
        self._reactor_checkpoint.wait()
        self._is_paused = False
        if not self._reactor_checkpoint.is_set():
            continue  # a send_*() paused us after we passed the checkpoint: stay off its queue

        context_id, msg = self.dimse.get_msg(block=False)
        idle = msg is None
        if msg:
            self._serve_request(msg, context_id)

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            ASSOC_LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            ASSOC_LOGGER.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            ASSOC_LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


def _assoc_kill(self) -> None:
    """pynetdicom's ``kill``, waking both reactors and polling every 1 ms instead of 10."""
    self._reactor_checkpoint.set()
    self._kill = True
    self.is_established = False
    self._is_paused = True
    self._reactor_wake.set()
    while self.dul.is_alive() and not self.dul.stop_dul():
        self.dul.wake()
        time.sleep(0.001)


def _dul_receive_pdu(self, wait: bool = False, timeout: float | None = None):
    """pynetdicom 3.0.4 ``receive_pdu`` that stops waiting once the DUL thread has ended.

    Stock pynetdicom waits out the whole timeout (``acse_timeout``, 30 s by default) for
    an A-ASSOCIATE-RQ even after the peer closed the connection, so every connection that
    closes before its request (a port probe, a load balancer's health check) left an
    association thread behind for that long.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = MAX_WAIT if deadline is None else min(MAX_WAIT, deadline - time.monotonic())
        try:
            primitive = self.to_user_queue.get(
                block=wait and remaining > 0, timeout=max(remaining, 0) if wait else None
            )
        except queue.Empty:
            if not wait or (deadline is not None and time.monotonic() >= deadline) or not self.is_alive():
                return None
            continue
        if isinstance(primitive, (A_ASSOCIATE, A_RELEASE, A_ABORT, A_P_ABORT)):
            evt.trigger(self.assoc, evt.EVT_ACSE_RECV, {"primitive": primitive})
        return primitive


class _AnsweredSocket:
    """The requestor's socket as ``ACSE._negotiate_as_requestor`` checks it (pynetdicom 3.0.4).

    After sending the A-ASSOCIATE-RQ and triggering EVT_REQUESTED, the association thread
    waits for ``socket._ready`` and reports the association aborted unless
    ``socket._is_connected``. If the peer answers and closes fast (an A-ASSOCIATE-RJ, then
    AE-4 closes the connection) before that thread looks, stock pynetdicom reports a rejected
    association as aborted: a slow EVT_REQUESTED handler makes it certain, and with the
    event-driven DUL it happened to 0.3 % of rejections under load here. The connection
    counts as made when the peer's answer (A-ASSOCIATE-AC/RJ or A-ABORT) is already waiting.
    """

    def __init__(self, dul):
        self._dul = dul
        self._ready = dul.socket._ready

    @property
    def _is_connected(self) -> bool:
        if self._dul.socket._is_connected:
            return True
        try:
            answer = self._dul.to_user_queue.queue[0]
        except IndexError:
            return False
        return isinstance(answer, (A_ASSOCIATE, A_ABORT))


def _acse_socket(self):
    """``ACSE.socket``, read only by the requestor's connection check (see :class:`_AnsweredSocket`)."""
    dul = self.assoc.dul
    return None if dul.socket is None else _AnsweredSocket(dul)


# -- installation -----------------------------------------------------------------------


def install_reactors() -> None:
    """Install the event-driven reactors (applied by :mod:`router.engine.seam` when pynetdicom's code matches)."""
    RouterDUL.setup = _dul_setup
    RouterDUL.wake = _dul_wake
    RouterDUL.run_reactor = _dul_run_reactor
    RouterDUL.kill_dul = _dul_kill
    RouterDUL.stop_dul = _dul_stop
    RouterAssociation.setup = _assoc_setup
    RouterAssociation.wake_reactor = _assoc_wake
    RouterAssociation._run_reactor = _assoc_run_reactor
    RouterAssociation.kill = _assoc_kill


def _get_msg(self, block: bool = False):
    """``DIMSEServiceProvider.get_msg``, which gives the association's own reactor nothing while
    a ``send_*()`` call has paused it.

    pynetdicom 3.0.4's reactor can pass its checkpoint just before a ``send_*()`` call on
    another thread clears it; it then took the peer's response off the queue and treated it
    as a request, and the ``send_*()`` call saw the association end ("Connection closed while
    waiting for DIMSE message"). The reactor asks for a message only after it has unpaused,
    so a call that clears the checkpoint later waits for the reactor's next pass before
    sending anything.
    """
    assoc = self.assoc
    if not block and threading.current_thread() is assoc and not assoc._reactor_checkpoint.is_set():
        return None, None
    return _stock["get_msg"](self, block)


def install_reactor_keeps_off_responses() -> None:
    RouterDIMSE.get_msg = _get_msg


def install_receive_until_closed() -> None:
    """Waiting for the peer's A-ASSOCIATE-RQ ends when the connection does (:func:`_dul_receive_pdu`)."""
    RouterDUL.receive_pdu = _dul_receive_pdu


def install_answered_socket() -> None:
    """A rejection the peer answered before the association thread looked is reported as one
    (:class:`_AnsweredSocket`), in every engine mode."""
    RouterACSE.socket = property(_acse_socket)
