/** Small formatting helpers used in log lines and error messages. */
export function hex(n: number | bigint, width = 0): string {
  return `0x${n.toString(16).padStart(width, '0')}`;
}
