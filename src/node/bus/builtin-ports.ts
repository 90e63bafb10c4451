/**
 * The bus port kinds this build knows, by URL scheme (`--link`) and file extension (`--capture`,
 * `--replay`). A new kind is a module exporting a PortFactory and one `register` line here.
 */
import { cannelloniPortFactory } from '../net/cannelloni-link.js';
import { socketcandLinkFactory } from '../net/socketcand-link.js';
import { PortRegistry } from './port-registry.js';

export const builtinPorts = new PortRegistry()
  .register(socketcandLinkFactory)
  .register(cannelloniPortFactory);

/**
 * Options shared by the port kinds (for example `--replay-speed`), declared once here so the command
 * line accepts them and hands them to every port of that kind (PortContext.options). `check`
 * validates a value at parse time (a message for a bad one).
 */
export interface PortKindOption {
  readonly type: 'string' | 'boolean';
  readonly help: string;
  check?(value: string | boolean): string | undefined;
}

export const PORT_KIND_OPTIONS: Readonly<Record<string, PortKindOption>> = {};
