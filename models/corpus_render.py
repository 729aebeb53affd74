"""Rendered music: scores (MusicXML, Humdrum, ABC, MIDI) played through General MIDI soundfonts.

The Debian corpus has many hours of instrumental game soundtracks and little
music with drums, distorted guitars and bass. Rendering scores with drawn
arrangements adds that texture: each score gets one ``Arrangement`` (GM
programs per part, a drum kit or none, a tempo, a soundfont, a level), drawn
from a seed, so a rebuild renders the same audio.

- A *band* arrangement puts the lowest part on a bass, the top part on an
  overdriven or distorted guitar or a synth lead, a guitar, organ or piano
  on the others, and adds a rock, pop or electronic drum pattern on the beat.
- Other arrangements draw any pitched GM program, with drums now and then.
- Programs that sound like voices (choir, voice oohs, synth voice, the voice
  lead and pad) and GM sound effects are never drawn: rendered music must
  not teach "speech" or "noise".

The renderer is FluidSynth through the ``pyfluidsynth`` binding (Debian:
``libfluidsynth3``); scores are read with music21.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.features import SAMPLE_RATE

DRUM_CHANNEL = 9
DRUM_BANK = 128
MAX_PARTS = 8  # channels 0-8; 9 is the drum channel
VOICE_PROGRAMS = frozenset({52, 53, 54, 85, 91})
PITCHED_PROGRAMS = tuple(p for p in range(112) if p not in VOICE_PROGRAMS)  # 112+: percussive and effects
LEAD_PROGRAMS = (29, 30, 30, 81, 80, 87)  # overdriven, distortion guitar (twice as likely), saw, square, bass+lead
RHYTHM_PROGRAMS = (29, 30, 27, 28, 25, 18, 16, 4, 2, 62)  # guitars, rock/drawbar organ, e-pianos, synth brass
BASS_PROGRAMS = (33, 34, 35, 38, 39, 36)
TAIL_S = 1.5  # let the last notes ring out

# Drum patterns on a grid of eighth notes, one 4/4 bar: (GM key, velocity) per step.
KICK, SNARE, CLOSED_HAT, OPEN_HAT, RIDE, CRASH, CLAP = 36, 38, 42, 46, 51, 49, 39
DRUM_PATTERNS = {
    "rock": [[(KICK, 110), (CLOSED_HAT, 80)], [(CLOSED_HAT, 60)], [(SNARE, 110), (CLOSED_HAT, 80)],
             [(CLOSED_HAT, 60)], [(KICK, 110), (CLOSED_HAT, 80)], [(KICK, 90), (CLOSED_HAT, 60)],
             [(SNARE, 110), (CLOSED_HAT, 80)], [(OPEN_HAT, 70)]],
    "pop": [[(KICK, 100), (RIDE, 70)], [(RIDE, 60)], [(SNARE, 100), (CLAP, 80), (RIDE, 70)], [(KICK, 80)],
            [(KICK, 100), (RIDE, 70)], [(RIDE, 60)], [(SNARE, 100), (RIDE, 70)], [(RIDE, 60)]],
    "electronic": [[(KICK, 120)], [(OPEN_HAT, 70)], [(KICK, 120), (CLAP, 100)], [(OPEN_HAT, 70)],
                   [(KICK, 120)], [(OPEN_HAT, 70)], [(KICK, 120), (CLAP, 100)], [(OPEN_HAT, 80)]],
    "metal": [[(KICK, 120), (CRASH, 90)], [(KICK, 110)], [(SNARE, 120), (KICK, 110)], [(KICK, 110)],
              [(KICK, 120), (CLOSED_HAT, 90)], [(KICK, 110)], [(SNARE, 120), (KICK, 110)], [(KICK, 110)]],
}


class RenderError(RuntimeError):
    """A score that cannot be read or rendered; the message names it."""


@dataclass(frozen=True)
class Note:
    start_q: float  # in quarter notes from the start of the score
    length_q: float
    key: int
    velocity: int


@dataclass(frozen=True)
class Arrangement:
    programs: tuple[int, ...]  # one GM program per part, in part order
    drums: str | None  # a DRUM_PATTERNS name, or None
    bpm: float
    gain_db: float
    band: bool

    def describe(self) -> str:
        drums = self.drums or "none"
        return (f"programs={'/'.join(map(str, self.programs))};drums={drums};bpm={self.bpm:.0f};"
                f"gain_db={self.gain_db:.1f}")


def read_score(path: Path, max_parts: int = MAX_PARTS) -> list[list[Note]]:
    """The notes of each part of a score (any format music21 reads), ties merged; empty parts left out."""
    import music21

    try:
        score = music21.converter.parse(str(path))
    except Exception as error:  # music21 raises many unrelated types for files it cannot read
        raise RenderError(f"cannot read score {path}: {type(error).__name__}: {error}") from None
    parts = list(getattr(score, "parts", None) or [score])
    result = []
    for part in parts[:max_parts]:
        notes = []
        for element in part.stripTies().flatten().notes:
            velocity = element.volume.velocity or 90
            for pitch in element.pitches:
                if 0 <= pitch.midi < 128 and element.quarterLength > 0:
                    notes.append(Note(float(element.offset), float(element.quarterLength), pitch.midi, velocity))
        if notes:
            result.append(notes)
    if not result:
        raise RenderError(f"score {path} holds no notes")
    return result


def draw_arrangement(parts: list[list[Note]], rng: np.random.Generator, band: bool) -> Arrangement:
    """Programs, drums, tempo and level for a score; ``band`` asks for drums, bass and guitars."""
    order = sorted(range(len(parts)), key=lambda i: -np.mean([n.key for n in parts[i]]))  # top part first
    programs = [0] * len(parts)
    for rank, index in enumerate(order):
        if band and rank == 0:
            programs[index] = int(rng.choice(LEAD_PROGRAMS))
        elif band and rank == len(order) - 1 and len(order) > 1:
            programs[index] = int(rng.choice(BASS_PROGRAMS))
        elif band:
            programs[index] = int(rng.choice(RHYTHM_PROGRAMS))
        else:
            programs[index] = int(rng.choice(PITCHED_PROGRAMS))
    drums = str(rng.choice(list(DRUM_PATTERNS))) if band or rng.random() < 0.25 else None
    bpm = float(rng.uniform(90, 170) if band else rng.uniform(60, 150))
    return Arrangement(tuple(programs), drums, bpm, float(rng.uniform(-12, 0)), band)


def _events(parts: list[list[Note]], arrangement: Arrangement, max_s: float) -> list[tuple[float, int, int, int, int]]:
    """(time_s, on, channel, key, velocity) for the notes and drums up to ``max_s``, in play order (offs first)."""
    seconds_per_q = 60.0 / arrangement.bpm
    events = []
    for channel, notes in enumerate(parts):
        bass = arrangement.programs[channel] in BASS_PROGRAMS
        for note in notes:
            key = note.key - 12 if bass and note.key >= 52 else note.key  # basses play an octave down
            events.append((note.start_q * seconds_per_q, 1, channel, key, note.velocity))
            events.append(((note.start_q + note.length_q) * seconds_per_q, 0, channel, key, 0))
    if arrangement.drums:
        end_q = max(n.start_q + n.length_q for notes in parts for n in notes)
        pattern = DRUM_PATTERNS[arrangement.drums]
        for step in range(math.ceil(end_q * 2)):
            for key, velocity in pattern[step % len(pattern)]:
                if step % 16 == 0 and key in (KICK,) and arrangement.drums != "electronic":
                    events.append((step / 2 * seconds_per_q, 1, DRUM_CHANNEL, CRASH, velocity))
                events.append((step / 2 * seconds_per_q, 1, DRUM_CHANNEL, key, velocity))
    events = [event for event in events if event[0] < max_s]
    events.sort(key=lambda e: (e[0], e[1]))
    return events


_SYNTHS: dict[Path, tuple[object, int]] = {}  # one synth per soundfont and process: loading one takes ~1 s


def _synth(soundfont: Path, sample_rate: int):
    import fluidsynth

    if soundfont not in _SYNTHS:
        synth = fluidsynth.Synth(samplerate=float(sample_rate), gain=0.3)
        font = synth.sfload(str(soundfont))
        if font < 0:
            synth.delete()
            raise RenderError(f"FluidSynth cannot load soundfont {soundfont}")
        _SYNTHS[soundfont] = (synth, font)
    synth, font = _SYNTHS[soundfont]
    synth.system_reset()
    return synth, font


def render(parts: list[list[Note]], arrangement: Arrangement, soundfont: Path, max_s: float = 120.0,
           sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Float32 mono audio of the first ``max_s`` of ``parts`` played with ``arrangement``,
    peak-normalised, then set to the arrangement's gain."""
    synth, font = _synth(Path(soundfont), sample_rate)
    for channel, program in enumerate(arrangement.programs):
        synth.program_select(channel, font, 0, program)
    if arrangement.drums:
        synth.program_select(DRUM_CHANNEL, font, DRUM_BANK, 0)
    chunks, now = [], 0
    for when, on, channel, key, velocity in _events(parts, arrangement, max_s):
        frames = int(when * sample_rate) - now
        if frames > 0:
            chunks.append(synth.get_samples(frames))
            now += frames
        if on:
            synth.noteon(channel, key, velocity)
        else:
            synth.noteoff(channel, key)
    chunks.append(synth.get_samples(int(TAIL_S * sample_rate)))
    stereo = np.concatenate(chunks).astype(np.float32).reshape(-1, 2)
    audio = stereo.mean(axis=1) / 32768.0
    peak = float(np.abs(audio).max())
    if peak <= 0:
        raise RenderError("the rendering is silent")
    return (audio / peak * 10 ** (arrangement.gain_db / 20) * 0.9).astype(np.float32)


def renderer_missing() -> str | None:
    """Why rendering cannot run here (a message naming the install), or None when it can."""
    try:
        import fluidsynth  # noqa: F401  (the binding loads libfluidsynth when imported)
        import music21  # noqa: F401
    except ImportError as error:
        return (f"rendered music needs FluidSynth and music21 ({error}): install the train extra "
                "(pip install -e '.[train]') and libfluidsynth3 (Debian: apt-get install libfluidsynth3)")
    return None
