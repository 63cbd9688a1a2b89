"""A Wyoming client built on the PyPI `wyoming` library (what Home Assistant uses), for
Panda's Wyoming tests: each command prints one JSON object on stdout.

    python wyoming_client.py URI info
    python wyoming_client.py URI transcribe IN.wav [LANGUAGE]
    python wyoming_client.py URI synthesize TEXT OUT.wav [--stream] [VOICE]
    python wyoming_client.py URI detect IN.wav
    python wyoming_client.py URI satellite QUESTION_OUT.wav ANSWER.wav

`satellite` plays Home Assistant's part against Panda in satellite mode, the way its
Wyoming integration does: `run-satellite`, `describe`, a `ping` 2 s after each `pong`
(a satellite silent for 5 s is dropped); it prints `{"ready": …}` once the satellite
answered, waits for `run-pipeline` and the question's audio, answers as a pipeline
would (`transcribe`, `voice-started`, `voice-stopped`, `transcript`, `synthesize`, the
answer's audio in 1024-sample chunks), waits for `played`, and prints what it saw.
"""

import asyncio
import json
import sys
import time
import wave

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncClient
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.pipeline import RunPipeline
from wyoming.satellite import RunSatellite
from wyoming.snd import Played
from wyoming.vad import VoiceStarted, VoiceStopped
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)
from wyoming.wake import Detect, Detection, NotDetected


async def send_wav(client, path, chunk_ms=100):
    with wave.open(path, "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        per = rate * chunk_ms // 1000
        while True:
            data = w.readframes(per)
            if not data:
                break
            await client.write_event(
                AudioChunk(rate=rate, width=width, channels=channels, audio=data).event()
            )
        await client.write_event(AudioStop().event())


async def satellite(client, question_out, answer_wav, t0):
    """Home Assistant's side of satellite mode (see the module doc)."""
    await client.write_event(RunSatellite().event())
    await client.write_event(Describe().event())
    seen, pongs, pong_ms, state = [], 0, [], {}
    ping_at = None  # when the ping in flight was sent
    next_ping = time.monotonic() + 2.0
    pcm, run, ready = b"", None, False

    async def next_event():
        # Like Home Assistant: every wait for the satellite is bounded by 5 s.
        nonlocal ping_at, next_ping
        while True:
            now = time.monotonic()
            if ping_at is None and now >= next_ping:
                await client.write_event(Ping(text="ha").event())
                ping_at = now
            wait = 0.2 if ping_at is not None else max(0.01, next_ping - now)
            try:
                return await asyncio.wait_for(client.read_event(), timeout=min(wait, 5))
            except asyncio.TimeoutError:
                if ping_at is not None and time.monotonic() - ping_at > 5:
                    raise SystemExit("the satellite did not answer a ping within 5 s")

    async def handle(ev):
        nonlocal pongs, ping_at, next_ping, ready
        if ev is None:
            raise SystemExit("the satellite closed the connection")
        if Pong.is_type(ev.type):
            pongs += 1
            pong_ms.append((time.monotonic() - ping_at) * 1000)
            ping_at, next_ping = None, time.monotonic() + 2.0
            return True
        if Ping.is_type(ev.type):
            await client.write_event(Pong(text=Ping.from_event(ev).text).event())
            return True
        seen.append(ev.type)
        if Info.is_type(ev.type):
            info = Info.from_event(ev)
            sat = info.satellite
            state["info"] = {
                "satellite": sat.name if sat else None,
                "has_vad": sat.has_vad if sat else None,
                "active_wake_words": sat.active_wake_words if sat else None,
                "wake": [[m.name, m.phrase] for p in info.wake for m in p.models],
            }
            return True
        return False

    # Ready once the satellite has described itself and answered a ping.
    while not ready:
        ev = await next_event()
        await handle(ev)
        ready = "info" in state and pongs >= 1
    print(json.dumps({"ready": state["info"]}), flush=True)

    # The question.
    while True:
        ev = await next_event()
        if await handle(ev):
            continue
        if RunPipeline.is_type(ev.type):
            run = ev.data
        elif AudioChunk.is_type(ev.type) and run is not None:
            chunk = AudioChunk.from_event(ev)
            state["format"] = [chunk.rate, chunk.width, chunk.channels]
            pcm += chunk.audio
        elif AudioStop.is_type(ev.type) and run is not None:
            break
    with wave.open(question_out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)

    # The pipeline's answer, as Home Assistant sends it.
    await client.write_event(Transcribe(language="en").event())
    await client.write_event(VoiceStarted(timestamp=0).event())
    await client.write_event(VoiceStopped(timestamp=len(pcm) // 32).event())
    await client.write_event(Transcript(text="What is the capital of France?").event())
    await client.write_event(Synthesize(text="Paris is the capital of France.").event())
    with wave.open(answer_wav, "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    step = 1024 * width * channels
    for i in range(0, len(frames), step):
        await client.write_event(
            AudioChunk(rate=rate, width=width, channels=channels, audio=frames[i:i + step]).event()
        )
    await client.write_event(AudioStop().event())
    sent_at = time.monotonic()
    audio_s = len(frames) / (rate * width * channels)
    while True:
        ev = await next_event()
        if await handle(ev):
            continue
        if Played.is_type(ev.type):
            break
        if time.monotonic() - sent_at > audio_s + 60:
            raise SystemExit("no played event")
    print(json.dumps({
        "run_pipeline": run,
        "question_ms": len(pcm) * 1000 // 32000,
        "format": state.get("format"),
        "played_after_ms": (time.monotonic() - sent_at) * 1000,
        "answer_ms": audio_s * 1000,
        "pongs": pongs,
        "max_pong_ms": max(pong_ms),
        "seen": seen,
        "ms": (time.monotonic() - t0) * 1000,
    }), flush=True)


async def main():
    uri, cmd = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    async with AsyncClient.from_uri(uri) as client:
        t0 = time.monotonic()
        if cmd == "info":
            await client.write_event(Describe().event())
            while True:
                ev = await client.read_event()
                if Info.is_type(ev.type):
                    info = Info.from_event(ev)
                    print(json.dumps({
                        "ms": (time.monotonic() - t0) * 1000,
                        "asr": [m.name for p in info.asr for m in p.models],
                        "asr_languages": [l for p in info.asr for m in p.models for l in m.languages],
                        "tts": [v.name for p in info.tts for v in p.voices],
                        "wake": [m.name for p in info.wake for m in p.models],
                    }))
                    return
        elif cmd == "transcribe":
            language = args[1] if len(args) > 1 else None
            await client.write_event(Transcribe(language=language).event())
            await send_wav(client, args[0])
            kinds = []
            while True:
                ev = await client.read_event()
                kinds.append(ev.type)
                if Transcript.is_type(ev.type):
                    t = Transcript.from_event(ev)
                    print(json.dumps({"text": t.text, "language": t.language, "events": kinds,
                                      "ms": (time.monotonic() - t0) * 1000}))
                    return
                if ev.type == "error":
                    print(json.dumps({"error": ev.data}))
                    return
        elif cmd == "synthesize":
            text, out = args[0], args[1]
            stream = "--stream" in args
            rest = [a for a in args[2:] if a != "--stream"]
            voice = SynthesizeVoice(name=rest[0]) if rest else None
            if stream:
                await client.write_event(SynthesizeStart(voice=voice).event())
                # Word by word, as an LLM streams.
                for word in text.split(" "):
                    await client.write_event(SynthesizeChunk(text=word + " ").event())
                await client.write_event(Synthesize(text=text, voice=voice).event())
                await client.write_event(SynthesizeStop().event())
            else:
                await client.write_event(Synthesize(text=text, voice=voice).event())
            pcm, starts, rate, first_ms = b"", 0, None, None
            while True:
                ev = await client.read_event()
                if ev is None:
                    break
                if AudioStart.is_type(ev.type):
                    starts += 1
                    rate = AudioStart.from_event(ev).rate
                elif AudioChunk.is_type(ev.type):
                    if first_ms is None:
                        first_ms = (time.monotonic() - t0) * 1000
                    pcm += AudioChunk.from_event(ev).audio
                elif AudioStop.is_type(ev.type) and not stream:
                    break
                elif SynthesizeStopped.is_type(ev.type):
                    break
                elif ev.type == "error":
                    print(json.dumps({"error": ev.data}))
                    return
            with wave.open(out, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate or 24000)
                w.writeframes(pcm)
            print(json.dumps({"audio_groups": starts, "rate": rate, "samples": len(pcm) // 2,
                              "first_audio_ms": first_ms,
                              "ms": (time.monotonic() - t0) * 1000}))
        elif cmd == "detect":
            await client.write_event(Detect().event())
            await send_wav(client, args[0])
            found = []
            while True:
                ev = await client.read_event()
                if Detection.is_type(ev.type):
                    d = Detection.from_event(ev)
                    found.append({"name": d.name, "timestamp": d.timestamp})
                elif NotDetected.is_type(ev.type):
                    break
                elif ev.type == "error":
                    print(json.dumps({"error": ev.data}))
                    return
                if found:
                    # Stop waiting once a detection came and the server said nothing
                    # more for a moment.
                    try:
                        ev = await asyncio.wait_for(client.read_event(), timeout=3)
                    except asyncio.TimeoutError:
                        break
                    if Detection.is_type(ev.type):
                        d = Detection.from_event(ev)
                        found.append({"name": d.name, "timestamp": d.timestamp})
                    break
            print(json.dumps({"detections": found}))
        elif cmd == "satellite":
            await satellite(client, args[0], args[1], t0)
        else:
            raise SystemExit(f"unknown command {cmd}")


asyncio.run(main())
