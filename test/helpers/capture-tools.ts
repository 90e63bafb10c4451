// The real readers of capture files, run as a user would: tshark (pcapng), python-can from Debian
// (/usr/bin/python3: LogReader, ASCReader, BLFReader) and can-utils' log2asc. Each helper says
// why it cannot run (the test skips with that reason outside CI and fails in CI, where
// scripts/deps/host-packages.sh installs them).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/** Undefined when `tool` runs here; otherwise why not. */
export function missingTool(tool: 'tshark' | 'python-can' | 'log2asc'): string | undefined {
  const r =
    tool === 'tshark'
      ? spawnSync('tshark', ['--version'], { encoding: 'utf8' })
      : tool === 'log2asc'
        ? spawnSync('sh', ['-c', 'command -v log2asc'], { encoding: 'utf8' })
        : existsSync('/usr/bin/python3')
          ? spawnSync('/usr/bin/python3', ['-c', 'import can'], { encoding: 'utf8' })
          : { status: 1, error: new Error('/usr/bin/python3 is missing') };
  if (r.error === undefined && r.status === 0) return undefined;
  const why = `${tool} is not installed (scripts/deps/host-packages.sh installs it)`;
  if (process.env.CI) throw new Error(`${why}: CI must have it`);
  return why;
}

/** One packet as tshark decodes it. */
export interface TsharkPacket {
  iface: string;
  epoch: string;
  id: number | null;
  xtd: boolean;
  rtr: boolean;
  err: boolean;
  len: number | null;
  brs: boolean | null;
  esi: boolean | null;
  data: string;
  comment: string;
  direction: number | null;
  fd: boolean;
}

/** `tshark -r FILE` with the CAN fields; throws with tshark's output when it fails. */
export function tsharkRead(file: string, opts: { allowCutShort?: boolean } = {}): TsharkPacket[] {
  const fields = [
    'frame.interface_name',
    'frame.time_epoch',
    'can.id',
    'can.flags.xtd',
    'can.flags.rtr',
    'can.flags.err',
    'can.len',
    'canfd.flags.brs',
    'canfd.flags.esi',
    'data',
    'frame.comment',
    'frame.packet_flags_direction',
    'frame.protocols',
  ];
  // CAN payloads go to heuristic dissectors (AUTOSAR NM, signal PDUs...) that would take the bytes
  // away from the plain "data" field: switch them off.
  const noHeuristics = ['signal_pdu', 'autosar-nm', 'ipdum'].flatMap((p) => ['--disable-protocol', p]);
  const r = spawnSync(
    'tshark',
    [...noHeuristics, '-r', file, '-T', 'fields', '-E', 'separator=|', ...fields.flatMap((f) => ['-e', f])],
    {
      encoding: 'utf8',
      timeout: 60_000,
      maxBuffer: 256 << 20,
    },
  );
  const cutShort = /cut short in the middle of a packet/.test(r.stderr);
  if (r.status !== 0 && !(opts.allowCutShort && cutShort)) {
    throw new Error(`tshark -r ${file} exited ${r.status}: ${r.stderr}`);
  }
  const bool = (s: string | undefined): boolean => s === '1' || s === 'True';
  return r.stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      const f = l.split('|');
      return {
        iface: f[0] ?? '',
        epoch: f[1] ?? '',
        id: f[2] ? Number(f[2]) : null,
        xtd: bool(f[3]),
        rtr: bool(f[4]),
        err: bool(f[5]),
        len: f[6] ? Number(f[6]) : null,
        brs: f[7] ? bool(f[7]) : null,
        esi: f[8] ? bool(f[8]) : null,
        data: f[9] ?? '',
        comment: f[10] ?? '',
        direction: f[11] ? Number(f[11]) : null,
        // tshark 4.0 names CAN FD frames "can" too; only they have the FD flag fields.
        fd: (f[12] ?? '').split(':').includes('canfd') || (f[7] ?? '') !== '',
      };
    });
}

/** One message as python-can reads it. */
export interface PyCanMessage {
  t: string;
  id: number;
  ext: boolean;
  rtr: boolean;
  fd: boolean;
  brs: boolean;
  esi: boolean;
  err: boolean;
  rx: boolean;
  dlc: number;
  channel: string;
  data: string;
}

const PY = `
import can, json, sys
path, kind = sys.argv[1], sys.argv[2]
if kind == 'log': r = can.CanutilsLogReader(path)
elif kind == 'asc': r = can.ASCReader(path, relative_timestamp=False)
else: r = can.BLFReader(path)
for m in r:
    print(json.dumps({'t': '%.6f' % m.timestamp, 'id': m.arbitration_id, 'ext': m.is_extended_id,
        'rtr': m.is_remote_frame, 'fd': m.is_fd, 'brs': m.bitrate_switch, 'esi': m.error_state_indicator,
        'err': m.is_error_frame, 'rx': m.is_rx, 'dlc': m.dlc, 'channel': str(m.channel),
        'data': bytes(m.data or b'').hex()}))
`;

/** python-can's reader of `kind` over `file`; throws with its output when it fails. */
export function pythonCanRead(file: string, kind: 'log' | 'asc' | 'blf'): PyCanMessage[] {
  const r = spawnSync('/usr/bin/python3', ['-c', PY, file, kind], {
    encoding: 'utf8',
    timeout: 60_000,
    maxBuffer: 256 << 20,
  });
  if (r.status !== 0) throw new Error(`python-can ${kind} reader on ${file} exited ${r.status}: ${r.stderr}`);
  return r.stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as PyCanMessage);
}
