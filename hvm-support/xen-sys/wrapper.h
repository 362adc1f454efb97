/*
 * Input to bindgen for circ-xen-sys. Regenerate with ./regenerate.sh.
 *
 * Only the headers of the libraries circ-xen links; the allowlist in
 * regenerate.sh decides which items reach src/bindings.rs.
 */
#include <xenctrl.h>
#include <xenforeignmemory.h>
#include <xengnttab.h>
#include <xenevtchn.h>
#include <xentoollog.h>
#include <xenstore.h>
#include <xen/io/xs_wire.h>
#include <xen/hvm/save.h>
#include <xen/hvm/params.h>
#include <xen/vm_event.h>
#include <xen/grant_table.h>
#include <xen/io/console.h>

/*
 * HVM_SAVE_CODE(x) is a sizeof() trick over a per-type struct, which bindgen
 * cannot evaluate as a macro; an enumerator forces clang to compute it from
 * the header instead of us hard-coding the number.
 */
enum circ_hvm_save_code {
    CIRC_HVM_SAVE_CODE_CPU = HVM_SAVE_CODE(CPU),
};
