import sys,re
lines=open(sys.argv[1]).read().splitlines()
out=[];i=0
def dump(i):
    h=''
    while i<len(lines) and re.match(r'^[0-9a-f]{4}: ',lines[i]):
        h+=lines[i][6:40].replace(' ','')
        i+=1
    return h,i
pending=None
while i<len(lines):
    l=lines[i]
    if 'socket_xmit_buf() Writing' in l:
        h,i=dump(i+1); pending=h; continue
    if 'Response received' in l:
        h,i=dump(i+1); out.append((pending,h)); pending=None; continue
    i+=1
names={0x17a:'GetCapability',0x17e:'PCR_Read',0x131:'CreatePrimary',0x120:'EvictControl',0x12a:'NV_DefineSpace',0x137:'NV_Write',0x14e:'NV_Read',0x169:'NV_ReadPublic',0x158:'Quote',0x173:'ReadPublic',0x162:'ContextSave',0x161:'ContextLoad',0x165:'FlushContext',0x176:'StartAuthSession',0x122:'NV_UndefineSpace'}
for c,r in out:
    cc=int(c[12:20],16)
    print('#',names.get(cc,hex(cc)))
    print('cmd',c)
    print('rsp',r)
