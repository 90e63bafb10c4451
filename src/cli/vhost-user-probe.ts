#!/usr/bin/env node
/**
 * vhost-user-probe: connects to any vhost-user back-end socket and prints what it offers, using
 * read-only queries only: GET_FEATURES, GET_PROTOCOL_FEATURES, then (after SET_PROTOCOL_FEATURES,
 * which the spec requires before the MQ / CONFIG / mem-slot queries) GET_QUEUE_NUM,
 * GET_MAX_MEM_SLOTS and GET_CONFIG. It never sets features, owner, memory or rings, and closes the
 * connection at the end so the back-end accepts its real front-end again.
 *
 * Exit codes: 0 success, 1 cannot connect / the back-end failed, 2 usage error.
 */
import { parseArgs } from 'node:util';
import { ProtocolFeature } from '../core/vhost-user/protocol.js';
import { featureMask, hasFeature, VirtioFeature } from '../core/virtio/features.js';
import { FrontendError } from '../node/frontend/errors.js';
import { VhostUserFrontend } from '../node/frontend/frontend.js';

const HELP = `Usage: vhost-user-probe <socket> [options]

Queries a vhost-user back-end (read-only) and prints its features.

Options:
  --json               print one JSON object instead of text
  --config-size <n>    bytes to read with GET_CONFIG (0..256, default 16; 0 skips it)
  --timeout <ms>       per-request timeout (default 3000)
  -h, --help           this text
`;

/** Protocol features the probe acknowledges (only what its queries need). */
const PROBE_PROTOCOL = featureMask(
  ProtocolFeature.MQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
);

const genericNames = new Map<number, string>(Object.entries(VirtioFeature).map(([k, v]) => [v, k]));
const protocolNames = new Map<number, string>(Object.entries(ProtocolFeature).map(([k, v]) => [v, k]));

interface ProbeResult {
  socket: string;
  features: string;
  featureBits: { bit: number; name: string }[];
  protocolFeatures: string | null;
  protocolFeatureBits: { bit: number; name: string }[];
  queueNum: number | null;
  maxMemSlots: number | null;
  config: { offset: number; size: number; hex: string } | { error: string } | null;
}

function bits(v: bigint): number[] {
  const out: number[] = [];
  for (let b = 0; b < 64; b++) if (hasFeature(v, b)) out.push(b);
  return out;
}

/** Generic virtio bits by name; bits 0..23 are device-specific ("bit N"). */
function featureName(bit: number): string {
  if (bit === VirtioFeature.PROTOCOL_FEATURES) return 'PROTOCOL_FEATURES (vhost-user)';
  if (bit < 24) return `bit ${bit} (device-specific)`;
  return genericNames.get(bit) ?? `bit ${bit}`;
}

function hex(v: bigint): string {
  return `0x${v.toString(16).padStart(16, '0')}`;
}

async function probe(socket: string, configSize: number, timeoutMs: number): Promise<ProbeResult> {
  const fe = VhostUserFrontend.connect(socket, { timeoutMs });
  try {
    const features = await fe.getFeatures();
    const result: ProbeResult = {
      socket,
      features: hex(features),
      featureBits: bits(features).map((bit) => ({ bit, name: featureName(bit) })),
      protocolFeatures: null,
      protocolFeatureBits: [],
      queueNum: null,
      maxMemSlots: null,
      config: null,
    };
    if (!hasFeature(features, VirtioFeature.PROTOCOL_FEATURES)) return result;
    const proto = await fe.getProtocolFeatures();
    result.protocolFeatures = hex(proto);
    result.protocolFeatureBits = bits(proto).map((bit) => ({
      bit,
      name: protocolNames.get(bit) ?? `bit ${bit}`,
    }));
    await fe.setProtocolFeatures(proto & PROBE_PROTOCOL);
    if (hasFeature(proto, ProtocolFeature.MQ)) result.queueNum = await fe.getQueueNum();
    if (hasFeature(proto, ProtocolFeature.CONFIGURE_MEM_SLOTS))
      result.maxMemSlots = await fe.getMaxMemSlots();
    if (hasFeature(proto, ProtocolFeature.CONFIG) && configSize > 0) {
      try {
        const c = await fe.getConfig(0, configSize);
        result.config = {
          offset: c.offset,
          size: c.size,
          hex: [...c.data].map((b) => b.toString(16).padStart(2, '0')).join(' '),
        };
      } catch (err) {
        if (!(err instanceof FrontendError) || err.code !== 'ERR_FRONTEND_CONFIG_REFUSED') throw err;
        result.config = { error: 'refused (empty reply)' };
      }
    }
    return result;
  } finally {
    fe.close();
  }
}

function formatProbe(r: ProbeResult): string {
  const lines = [`socket: ${r.socket}`, `features: ${r.features}`];
  for (const b of r.featureBits) lines.push(`  ${String(b.bit).padStart(2)}  ${b.name}`);
  if (r.protocolFeatures === null) {
    lines.push('protocol features: not offered (bit 30 clear)');
  } else {
    lines.push(`protocol features: ${r.protocolFeatures}`);
    for (const b of r.protocolFeatureBits) lines.push(`  ${String(b.bit).padStart(2)}  ${b.name}`);
  }
  if (r.queueNum !== null) lines.push(`queues: ${r.queueNum}`);
  if (r.maxMemSlots !== null) lines.push(`max mem slots: ${r.maxMemSlots}`);
  if (r.config !== null) {
    if ('error' in r.config) lines.push(`config: ${r.config.error}`);
    else lines.push(`config (${r.config.size} bytes at ${r.config.offset}): ${r.config.hex}`);
  }
  return `${lines.join('\n')}\n`;
}

async function main(argv: readonly string[]): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (err) {
    process.stderr.write(`vhost-user-probe: ${(err as Error).message}\nTry 'vhost-user-probe --help'.\n`);
    return 2;
  }
  if (parsed.values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const socket = parsed.positionals[0];
  if (socket === undefined || parsed.positionals.length > 1) {
    process.stderr.write(
      `vhost-user-probe: expected exactly one socket path\nTry 'vhost-user-probe --help'.\n`,
    );
    return 2;
  }
  const configSize = Number(parsed.values['config-size'] ?? '16');
  const timeoutMs = Number(parsed.values.timeout ?? '3000');
  if (!Number.isInteger(configSize) || configSize < 0 || configSize > 256) {
    process.stderr.write('vhost-user-probe: --config-size must be an integer 0..256\n');
    return 2;
  }
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) {
    process.stderr.write('vhost-user-probe: --timeout must be a positive integer (ms)\n');
    return 2;
  }
  let r: ProbeResult;
  try {
    r = await probe(socket, configSize, timeoutMs);
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'ERR';
    if (code === 'ERR_FRONTEND_CONNECT') {
      process.stderr.write(`vhost-user-probe: ${(err as Error).message}\n`);
    } else {
      process.stderr.write(`vhost-user-probe: ${socket}: ${(err as Error).message} (${code})\n`);
    }
    return 1;
  }
  process.stdout.write(parsed.values.json ? `${JSON.stringify(r)}\n` : formatProbe(r));
  return 0;
}

function parse(argv: readonly string[]) {
  return parseArgs({
    args: [...argv],
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      'config-size': { type: 'string' },
      timeout: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
}

main(process.argv.slice(2)).then(
  (rc) => {
    process.exitCode = rc;
  },
  (err: unknown) => {
    process.stderr.write(`vhost-user-probe: internal error: ${(err as Error)?.stack ?? err}\n`);
    process.exitCode = 1;
  },
);
