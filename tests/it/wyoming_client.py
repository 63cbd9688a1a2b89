"""A Wyoming client built on the PyPI `wyoming` library (what Home Assistant uses), for
Panda's Wyoming tests: each command prints one JSON object on stdout.

    python wyoming_client.py URI info
    python wyoming_client.py URI transcribe IN.wav [LANGUAGE]
    python wyoming_client.py URI synthesize TEXT OUT.wav [--stream] [VOICE]
    python wyoming_client.py URI detect IN.wav
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
        else:
            raise SystemExit(f"unknown command {cmd}")


asyncio.run(main())
