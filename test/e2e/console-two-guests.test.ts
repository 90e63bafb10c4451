// Two guests on one console daemon, each with its own console socket and client: each client
// reaches its own guest's shell (guest i on socket i and client port i), both at once.

import { test } from 'node:test';
import { skipWithoutKit, withRun } from './helpers/can-scenarios.js';
import {
  CONSOLE_PRELUDE,
  consoleBackendKind,
  shellRun,
  startConsoleBackend,
} from './helpers/console-scenarios.js';

const backendKind = consoleBackendKind();

test(
  'console: two guests, two consoles, each client on its own guest',
  { skip: skipWithoutKit ?? backendKind.skip, timeout: 180_000 },
  withRun('console-two-guests', async (run) => {
    const backend = await startConsoleBackend(run, { guests: 2 });
    const scenario = (name: string): string => `${CONSOLE_PRELUDE}
echo ${name} > /mnt/guest-name
console_shell shell-up
wait $shell_pid
signal shell-exited "$?"
`;
    const guests = [0, 1].map((i) =>
      run.startGuest({
        name: `guest-${i}`,
        consoles: [{ socketPath: backend.socketPath(i) }],
        scenario: scenario(`console-guest-${i}`),
      }),
    );
    for (const g of guests) await run.waitFor(g, 'shell-up', 120_000);
    const cons = [await backend.connect(0, 0), await backend.connect(1, 0)];
    // Both at once: the commands are typed before either answer is read.
    const answers = await Promise.all(cons.map((c) => shellRun(c, 'cat /mnt/guest-name; echo $((7*6))')));
    run.equal(answers, ['console-guest-0\n42', 'console-guest-1\n42'], 'each client reaches its own guest');
    for (const c of cons) c.write('exit\n');
    for (const g of guests) {
      const r = await g.done;
      run.guestFinished(r);
      run.equal(r.files('shell-exited').trim(), '0', "the shell's exit status");
    }
  }),
);
