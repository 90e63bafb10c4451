import { runMemoryCase } from './memory-target.js';
import { runSessionCase } from './session-target.js';

export type TargetName = 'session' | 'memory';

export const TARGETS: Record<TargetName, { inputLength: number; run(bytes: Uint8Array): unknown }> = {
  session: { inputLength: 4096, run: runSessionCase },
  memory: { inputLength: 1024, run: runMemoryCase },
};
