# A scripted serial port for the modem layer, run by micropython: each command written gets
# the answer lines the script gives for it (a list per command: one answer per time it is
# sent, the last one repeated), or no answer at all (None), as a hung modem would.

import asyncio


class ScriptedPort:
    def __init__(self, script, echo=True):
        self.script = script
        self.echo = echo
        self.sent = []
        self._lines = []
        self._ready = asyncio.Event()
        self._count = {}

    def write(self, data):
        cmd = data.decode().rstrip("\r")
        self.sent.append(cmd)
        answers = self.script.get(cmd, ["ERROR"])
        if answers is None:
            return
        if answers and not isinstance(answers[0], str):
            n = self._count.get(cmd, 0)
            self._count[cmd] = n + 1
            answers = answers[min(n, len(answers) - 1)]
        if answers is None:
            return
        if self.echo and cmd != "ATE0":
            self._lines.append(cmd + "\r\n")
        if cmd == "ATE0":
            self.echo = False
        for line in answers:
            self._lines.append("\r\n" + line + "\r\n")
        self._ready.set()

    async def readline(self):
        while not self._lines:
            self._ready.clear()
            await self._ready.wait()
        return self._lines.pop(0).encode()
