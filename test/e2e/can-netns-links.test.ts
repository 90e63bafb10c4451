// A bus across two hosts with real guests: two vhost-device-can daemons (the CLI), each in its own
// network namespace (test/helpers/netns.ts), linked with cannelloni, then with socketcand (host 0
// runs --socketcand-listen, host 1 links to it); a QEMU guest (mainline virtio_can) on each. Each guest sends classic, extended, CAN FD and RTR frames with cansend and
// 3,000 frames with cangen; candump in the other guest must show every one of them once, in order,
// and nothing of its own coming back (cansend's frames appear once, from the local echo; cangen -x
// frames never).

import { test } from 'node:test';
import {
  createNetLab,
  LINK_KINDS,
  linkEnd,
  linksUp,
  NetDaemon,
  netnsSkip,
  waitUntil,
} from '../helpers/netns.js';
import {
  candumpFrames,
  cangenIncrementing,
  guestCandumpOf,
  parseGuestStats,
  skipWithoutKit,
  withRun,
} from './helpers/can-scenarios.js';

const N = 3000;
const GUESTS = [
  {
    gen: '100',
    sent: [
      '101#11',
      '1A000001#DEADBEEF',
      `102##1${'A5'.repeat(64)}`,
      '103#R4',
      '104##0112233445566778899AABBCC',
    ],
  },
  {
    gen: '200',
    sent: ['201#22', '1B000001#CAFE', `202##0${'5A'.repeat(48)}`, '203#R', '1B000002#R8'],
  },
] as const;

function scenario(g: (typeof GUESTS)[number]): string {
  return `
ip link set can0 up || fail "ip link set can0 up"
candump -L -r 16777216 can0 > /tmp/dump.txt &
dump=$!
wait_rcv 1
signal ready
await_host go 120
${g.sent.map((f) => `cansend can0 ${f} || fail "cansend ${f}"`).join('\n')}
cangen can0 -g 0.2 -p 100 -x -I ${g.gen} -L 8 -D i -n ${N} || fail "cangen exit status $?"
wait_stat tx_packets ${g.sent.length + N}
signal sent
await_host finish 120
kill $dump
wait $dump
cp /tmp/dump.txt /mnt/dump.txt
save_stats stats.txt
`;
}

const idOf = (frame: string): string => frame.split('#')[0]!;

for (const kind of LINK_KINDS) {
  test(
    `two hosts, two guests, one bus over ${kind.name}: cansend/cangen frames arrive once, in order, nothing comes back`,
    { skip: skipWithoutKit ?? netnsSkip, timeout: 400_000 },
    withRun(`netns-${kind.name}`, async (run, t) => {
      const lab = createNetLab(t, 2);
      const [h0, h1] = lab.hosts;
      const daemons = kind.args(lab, [[0, 1]]).map((args, i) => new NetDaemon(t, lab, i, { args }));
      await Promise.all(daemons.map((d) => d.ready()));
      run.note('daemons started in namespaces', {
        a: h0!.ns,
        b: h1!.ns,
        args: JSON.stringify(daemons.map((d) => d.args)),
      });
      const guests = GUESTS.map((g, i) =>
        run.startGuest({
          name: `guest${i}`,
          socketPaths: [daemons[i]!.path(0)],
          scenario: scenario(g),
          timeoutMs: 300_000,
        }),
      );
      await Promise.all(guests.map((g) => run.waitFor(g, 'ready', 180_000)));
      // Both daemons start at once: a socketcand link may have been refused once, and is retried.
      await linksUp(daemons);
      for (const g of guests) run.tell(g, 'go');
      await Promise.all(guests.map((g) => run.waitFor(g, 'sent', 180_000)));
      // Everything each guest sent crossed the link (each daemon's end received the other's frames).
      const perGuest = GUESTS[0].sent.length + N;
      const links = await Promise.all(
        daemons.map((d) =>
          waitUntil(
            `host ${d.host}: the link received ${perGuest} frames`,
            async () => {
              const e = await linkEnd(d);
              return e.rx === perGuest ? e : undefined;
            },
            30_000,
          ),
        ),
      );
      await new Promise((r) => setTimeout(r, 500)); // RX rings drained into candump
      for (const g of guests) run.tell(g, 'finish');
      const results = await Promise.all(guests.map((g) => g.done));
      for (const r of results) run.guestFinished(r);

      results.forEach((r, i) => {
        const other = GUESTS[1 - i]!;
        const mine = GUESTS[i]!;
        const dump = candumpFrames(r.files('dump.txt'));
        const fromOther = dump.filter((f) => {
          const id = idOf(f);
          return other.sent.some((s) => idOf(s) === id) || id === other.gen;
        });
        run.equal(
          fromOther,
          [...other.sent.map(guestCandumpOf), ...cangenIncrementing(other.gen, N)],
          `guest${i} received guest${1 - i}'s frames, all, once, in order`,
        );
        const own = dump.filter((f) => mine.sent.some((s) => idOf(s) === idOf(f)) || idOf(f) === mine.gen);
        run.equal(
          own.map(idOf),
          mine.sent.map(idOf),
          `guest${i} sees its cansend frames once (local echo) and no cangen -x frame: nothing came back over the link`,
        );
        run.equal(dump.length, fromOther.length + own.length, `guest${i}: no other frames`);
        const gs = parseGuestStats(r.files('stats.txt'));
        run.equal([gs.tx_packets, gs.tx_dropped, gs.rx_dropped], [perGuest, 0, 0], `guest${i} counters`);
      });
      links.forEach((e, i) => {
        run.equal(
          [e.name.startsWith(kind.name), e.up, e.tx, e.rx, e.droppedDown, e.droppedOverflow, e.bad, e.lost],
          [true, true, perGuest, perGuest, 0, 0, 0, 0],
          `host ${i} link end counters (${e.name})`,
        );
      });
      const buses = await Promise.all(daemons.map((d) => d.bus()));
      run.equal(
        buses.map((b) => b.frames),
        [2 * perGuest, 2 * perGuest],
        'each bus carried every frame once (no loop)',
      );
      run.saveResults({
        link: kind.name,
        framesPerGuest: perGuest,
        links: links.map((e) => ({ ...e.line })),
      });
    }),
  );
}
